"""XMP sidecars that photo managers read (Lightroom, darktable, digiKam), merged, never the originals.

Tags go to `dc:subject` (a flat bag), `lr:hierarchicalSubject` (`clipsearch|auto|dog`) and
`digiKam:TagsList` (`clipsearch/auto/dog`). An existing sidecar is merged: everything it holds that
is not one of clipsearch's own tags, unknown namespaces included, is kept. Files are replaced
atomically. `photo.jpg.xmp` is the sidecar name; an existing `photo.xmp` is used instead when there is
one (darktable writes the former, Lightroom the latter).
"""

from __future__ import annotations

import contextlib
import os
import xml.etree.ElementTree as ET
from pathlib import Path

NS = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "dc": "http://purl.org/dc/elements/1.1/",
    "lr": "http://ns.adobe.com/lightroom/1.0/",
    "digiKam": "http://www.digikam.org/ns/1.0/",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "darktable": "http://darktable.sf.net/",
    "exif": "http://ns.adobe.com/exif/1.0/",
    "tiff": "http://ns.adobe.com/tiff/1.0/",
    "photoshop": "http://ns.adobe.com/photoshop/1.0/",
}
for _prefix, _uri in NS.items():
    ET.register_namespace(_prefix, _uri)

ROOT = "clipsearch"
FIELDS = (("dc", "subject", "Bag", lambda t: t),
          ("lr", "hierarchicalSubject", "Bag", lambda t: f"{ROOT}|auto|{t}"),
          ("digiKam", "TagsList", "Seq", lambda t: f"{ROOT}/auto/{t}"))


def _q(prefix: str, name: str) -> str:
    return f"{{{NS[prefix]}}}{name}"


def sidecar_for(photo: str) -> Path:
    plain = Path(os.path.splitext(photo)[0] + ".xmp")
    return plain if plain.exists() and not Path(photo + ".xmp").exists() else Path(photo + ".xmp")


def _empty() -> ET.Element:
    meta = ET.Element(_q("x", "xmpmeta"))
    rdf = ET.SubElement(meta, _q("rdf", "RDF"))
    desc = ET.SubElement(rdf, _q("rdf", "Description"))
    desc.set(_q("rdf", "about"), "")
    return meta


def _description(root: ET.Element) -> ET.Element:
    rdf = root if root.tag == _q("rdf", "RDF") else root.find(_q("rdf", "RDF"))
    if rdf is None:
        rdf = ET.SubElement(root, _q("rdf", "RDF"))
    desc = rdf.find(_q("rdf", "Description"))
    if desc is None:
        desc = ET.SubElement(rdf, _q("rdf", "Description"))
        desc.set(_q("rdf", "about"), "")
    return desc


def _items(desc: ET.Element, prefix: str, name: str, kind: str) -> ET.Element:
    prop = desc.find(_q(prefix, name))
    if prop is None:
        prop = ET.SubElement(desc, _q(prefix, name))
    container = prop.find(_q("rdf", kind))
    if container is None:
        container = ET.SubElement(prop, _q("rdf", kind))
    return container


def update(photo: str, tags: list[str], dry_run: bool = False) -> tuple[Path, bool]:
    """Make the sidecar carry exactly `tags` as clipsearch's tags ([] clears them); (path, changed)."""
    path = sidecar_for(photo)
    try:
        if path.exists():
            # Keep the file's own namespace prefixes (ElementTree would rename unknown ones ns0, ns1…).
            for _event, (prefix, uri) in ET.iterparse(path, events=("start-ns",)):
                if prefix and not prefix.startswith("ns"):
                    ET.register_namespace(prefix, uri)
        root = ET.parse(path).getroot() if path.exists() else _empty()
    except ET.ParseError:
        raise ValueError(f"{path} is not valid XML; left untouched") from None
    before = ET.tostring(root)
    desc = _description(root)
    marker = f"{ROOT}|auto|"
    # clipsearch's earlier tags, known from its own hierarchical entries: in the flat dc:subject bag
    # only those are replaced, so a user's own keywords stay.
    previous = {(li.text or "")[len(marker):]
                for li in desc.iterfind(f"{_q('lr', 'hierarchicalSubject')}/*/{_q('rdf', 'li')}")
                if (li.text or "").startswith(marker)}
    for n, (prefix, name, kind, shape) in enumerate(FIELDS):
        container = _items(desc, prefix, name, kind)
        for li in list(container):
            text = li.text or ""
            if (text in previous) if n == 0 else text.startswith(shape("")):
                container.remove(li)
        existing = {li.text for li in container}
        for tag in tags:
            if shape(tag) not in existing:
                ET.SubElement(container, _q("rdf", "li")).text = shape(tag)
        if not len(container):
            prop = desc.find(_q(prefix, name))
            if prop is not None:
                desc.remove(prop)
    changed = ET.tostring(root) != before
    if changed and not dry_run:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=False)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    return path, changed
