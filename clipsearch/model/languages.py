"""Which languages a model's text tower reads, told from its name, and the scripts a query is in.

A CLIP BPE model (OpenAI, LAION, DataComp) was trained on English captions: a Korean or Russian
query returns noise without any error. Script detection is enough to notice (Hangul, kana, Han,
Cyrillic... cannot be English), so a query in such a script against an English-only model still
answers, with a note naming a model to index with instead. No torch; a few stats at most.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

RECOMMENDED = "xlm-roberta-base-ViT-B-32:laion5b_s13b_b90k"
# Names (or Hugging Face text towers) of the open_clip families trained on many languages.
MULTILINGUAL_MARKERS = ("xlm-roberta", "nllb", "i18n", "siglip2", "multilingual", "mt5", "m2m_100", "gemma")
# Unicode character-name prefixes of scripts an English-only tokenizer cannot read, by script.
SCRIPTS = {"HANGUL": "Hangul", "HIRAGANA": "kana", "KATAKANA": "kana", "CJK": "Han", "CYRILLIC": "Cyrillic",
           "ARABIC": "Arabic", "HEBREW": "Hebrew", "GREEK": "Greek", "THAI": "Thai", "DEVANAGARI": "Devanagari",
           "BENGALI": "Bengali", "TAMIL": "Tamil", "GEORGIAN": "Georgian", "ARMENIAN": "Armenian"}


def scripts_of(text: str) -> list[str]:
    """The non-Latin scripts in text (Latin, digits, punctuation and emoji are not counted)."""
    found: list[str] = []
    for ch in text:
        if ord(ch) < 0x370:  # ASCII and Latin-1/Latin Extended: nothing to look up
            continue
        name = unicodedata.name(ch, "")
        script = next((s for prefix, s in SCRIPTS.items() if name.startswith(prefix)), None)
        if script and script not in found:
            found.append(script)
    return found


def is_multilingual(model_name: str) -> bool:
    """True when the model's name, or for a local folder its Hugging Face text tower, is a multilingual
    family. Unknown local models with open_clip's CLIP text tower count as English (what CLIP BPE models are)."""
    if not model_name.startswith("local-dir:"):  # a folder's path says nothing (it may be called anything)
        return any(m in model_name.lower() for m in MULTILINGUAL_MARKERS)
    folder = Path(model_name[len("local-dir:"):])
    try:
        text_cfg = json.loads((folder / "open_clip_config.json").read_text()).get("model_cfg", {}).get("text_cfg", {})
        hf_type = json.loads((folder / "config.json").read_text()).get("model_type", "") \
            if (folder / "config.json").is_file() else ""
    except (OSError, ValueError, AttributeError):
        return False
    named = f"{text_cfg.get('hf_model_name', '')} {text_cfg.get('hf_tokenizer_name', '')} {hf_type}".lower()
    return any(m in named for m in MULTILINGUAL_MARKERS)


def note_for(texts: list[str], model_name: str) -> str | None:
    """One line for a query whose texts are in a script the model cannot read, else None."""
    scripts = [s for t in texts for s in scripts_of(t)]
    if not scripts or is_multilingual(model_name):
        return None
    shown = ", ".join(dict.fromkeys(scripts))
    return (f"this query is in {shown} script, but {model_name} understands English only, so results may be "
            f"noise; for queries in your language, index with a multilingual model: --model {RECOMMENDED} "
            "(`clipsearch models list`)")
