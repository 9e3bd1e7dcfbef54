"""XMP sidecars that photo managers read (Lightroom, darktable, digiKam), merged, never the originals.

Tags go to `dc:subject` (a flat bag), `lr:hierarchicalSubject` (`clipsearch|auto|dog`) and
`digiKam:TagsList` (`clipsearch/auto/dog`). An existing sidecar is merged: everything it holds that
is not one of clipsearch's own tags, unknown namespaces included, is kept, and so are its layout:
comments, the `<?xpacket?>` wrapper, namespace prefixes, which `rdf:Description` holds what, the
file's mode. clipsearch's own tags are exactly the ones it wrote: its hierarchical entries, and in the
flat `dc:subject` bag only the keywords it added (listed in `clipsearch:addedSubjects`), so a user's
keyword that equals a tag stays. A sidecar clipsearch created is removed once clearing empties it.
Files are replaced atomically. `photo.jpg.xmp` is the sidecar name; an existing `photo.xmp` is used
instead when there is one (darktable writes the former, Lightroom the latter).
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from clipsearch import paths

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
    "clipsearch": "http://ns.clipsearch.org/xmp/1.0/",
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


XPACKET = ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n', '\n<?xpacket end="w"?>\n')
ADDED = ("clipsearch", "addedSubjects")  # the dc:subject keywords clipsearch added (not the user's)
CREATED = ("clipsearch", "createdSidecar")  # "True" on a sidecar clipsearch made: removed when emptied


def _empty() -> ET.Element:
    meta = ET.Element(_q("x", "xmpmeta"))
    rdf = ET.SubElement(meta, _q("rdf", "RDF"))
    desc = ET.SubElement(rdf, _q("rdf", "Description"))
    desc.set(_q("rdf", "about"), "")
    desc.set(_q(*CREATED), "True")
    return meta


def _rdf(root: ET.Element) -> ET.Element:
    rdf = root if root.tag == _q("rdf", "RDF") else root.find(_q("rdf", "RDF"))
    if rdf is None:
        rdf = ET.SubElement(root, _q("rdf", "RDF"))
    return rdf


def _description(root: ET.Element, prefix: str, name: str) -> ET.Element:
    """The rdf:Description that holds the property already (a sidecar may have several), else the first."""
    rdf = _rdf(root)
    descriptions = rdf.findall(_q("rdf", "Description"))
    for desc in descriptions:
        if desc.find(_q(prefix, name)) is not None:
            return desc
    if descriptions:
        return descriptions[0]
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


def _values(root: ET.Element, prefix: str, name: str) -> list[str] | None:
    """The list items of a property anywhere in the sidecar; None when it has no such property."""
    found = None
    for desc in _rdf(root).findall(_q("rdf", "Description")):
        for li in desc.iterfind(f"{_q(prefix, name)}/*/{_q('rdf', 'li')}"):
            found = (found or []) + [li.text or ""]
        if found is None and desc.find(_q(prefix, name)) is not None:
            found = []
    return found


def _split(text: str) -> tuple[str, str, str]:
    """(prolog, root element, epilog): the xpacket wrapper, comments and padding around the root are
    kept byte for byte (ElementTree would drop them)."""
    i = 0
    while True:
        j = text.find("<", i)
        if j < 0:
            raise ValueError("no root element")
        if text.startswith("<?", j):
            i = text.index("?>", j) + 2
        elif text.startswith("<!--", j):
            i = text.index("-->", j) + 3
        elif text.startswith("<!", j):
            i = text.index(">", j) + 1
        else:
            break
    match = re.match(r"<([^\s/>]+)", text[j:])
    if match is None:
        raise ValueError("no root element")
    close = text.rfind(f"</{match.group(1)}")
    end = text.index("/>", j) + 2 if close < 0 else text.index(">", close) + 1
    return text[:j], text[j:end], text[end:]


def _read(path: Path) -> tuple[str, ET.Element, str]:
    try:
        prolog, body, epilog = _split(path.read_bytes().decode("utf-8"))
        # Keep the file's own namespace prefixes (ElementTree would rename unknown ones ns0, ns1…).
        for _event, (prefix, uri) in ET.iterparse(path, events=("start-ns",)):
            if prefix and not re.fullmatch(r"ns\d+", prefix):
                ET.register_namespace(prefix, uri)
        # No DOCTYPE reaches the parser (it stays in the prolog): entities, external or nested, are refused.
        parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True, insert_pis=True))
        return prolog, ET.fromstring(body, parser), epilog
    except (ET.ParseError, ValueError, UnicodeDecodeError):
        raise ValueError(f"{path} is not valid XML; left untouched") from None


def update(photo: str, tags: list[str], dry_run: bool = False) -> tuple[Path, bool]:
    """Make the sidecar carry exactly `tags` as clipsearch's tags ([] clears them); (path, changed)."""
    path = sidecar_for(photo)
    existed = path.exists()
    prolog, root, epilog = _read(path) if existed else (XPACKET[0], _empty(), XPACKET[1])
    before = ET.tostring(root)
    marker = f"{ROOT}|auto|"
    added_before = _values(root, *ADDED)
    if added_before is None:
        # Written before clipsearch listed its additions: its hierarchical entries say which tags
        # were its own (a user's equal keyword cannot be told apart in such a sidecar).
        added_before = [t[len(marker):] for t in _values(root, "lr", "hierarchicalSubject") or []
                        if t.startswith(marker)]
    added: list[str] = []
    for n, (prefix, name, kind, shape) in enumerate(FIELDS):
        desc = _description(root, prefix, name)
        container = _items(desc, prefix, name, kind)
        for li in list(container):
            text = li.text or ""
            if (text in added_before) if n == 0 else text.startswith(shape("")):
                container.remove(li)
        existing = {li.text for li in container}
        for tag in tags:
            if shape(tag) not in existing:
                ET.SubElement(container, _q("rdf", "li")).text = shape(tag)
                if n == 0:
                    added.append(tag)
        if not len(container):
            desc.remove(desc.find(_q(prefix, name)))  # type: ignore[arg-type]
    _record_added(root, added if tags else None)
    if not tags and _only_ours(root):
        if not dry_run:
            path.unlink(missing_ok=True)
        return path, existed
    changed = ET.tostring(root) != before
    if changed and not dry_run:
        def write(tmp: Path) -> None:
            tmp.write_bytes((prolog + ET.tostring(root, encoding="unicode") + epilog).encode("utf-8"))
            if existed:
                os.chmod(tmp, path.stat().st_mode & 0o7777)  # a private sidecar stays private

        paths.replace_atomically(path, write)
    return path, changed


def _record_added(root: ET.Element, added: list[str] | None) -> None:
    """List the keywords clipsearch added, even none (so an old sidecar's rule is not used again);
    cleared (None) the list goes too."""
    desc = _description(root, *ADDED)
    prop = desc.find(_q(*ADDED))
    if prop is not None:
        desc.remove(prop)
    if added is not None:
        bag = ET.SubElement(ET.SubElement(desc, _q(*ADDED)), _q("rdf", "Bag"))
        for tag in added:
            ET.SubElement(bag, _q("rdf", "li")).text = tag


def _only_ours(root: ET.Element) -> bool:
    """A sidecar clipsearch created that holds nothing else any more (no property, no other Description)."""
    descriptions = _rdf(root).findall(_q("rdf", "Description"))
    if len(descriptions) != 1 or descriptions[0].get(_q(*CREATED)) != "True":
        return False
    desc = descriptions[0]
    return not len(desc) and set(desc.attrib) <= {_q("rdf", "about"), _q(*CREATED)} and len(_rdf(root)) == 1
