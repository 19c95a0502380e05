"""Flattened device tree (DTB/FIT) reading, editing and writing, in pure Python.

What this module owns:

* ``Fdt.parse(blob)``: a checked reader for the devicetree blob format
  (devicetree specification v0.4, chapter 5; libfdt's ``fdt_next_tag`` and
  ``fdt_check_header`` rules). Every malformation raises ``FdtError`` (a
  ``ConfigError``), never an IndexError or struct.error.
* An editable tree (``Node`` with ordered ``Prop`` s and children) and
  ``Fdt.to_bytes()``, which writes the layout libfdt's ``fdt_pack`` and dtc
  produce: header, memory reservation block, structure block, strings block,
  then whatever free space the input had at its end (mkimage leaves some). A
  blob laid out so, without NOP tags, round-trips byte for byte: every property keeps
  its original string-table offset and the strings block is kept as it was.
* New properties and subnodes go first in their node, and new names are
  looked up and appended the way libfdt's
  ``fdt_find_add_string_`` does (any occurrence of ``name\\0``, suffixes
  included; otherwise appended at the end), at the moment the property is set.
  That keeps the strings block identical to what mkimage would have, which
  matters because FIT configuration signatures cover it.
* ``find_regions``: the region walk of U-Boot's ``boot/fdt_region.c``
  (``fdt_find_regions``), used for FIT configuration signatures and checked
  against U-Boot's own ``fdtgrep`` in the tests.

Standard library only.
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field

from ..errors import ConfigError

FDT_MAGIC = 0xD00DFEED
FDT_BEGIN_NODE = 1
FDT_END_NODE = 2
FDT_PROP = 3
FDT_NOP = 4
FDT_END = 9
HEADER_SIZE = 40
MAX_DEPTH = 32  # fdt_region.c FDT_MAX_DEPTH; deeper trees are refused everywhere
_U32 = struct.Struct(">I")
_HEADER = struct.Struct(">10I")


class FdtError(ConfigError):
    """The input is not a well-formed flattened device tree."""


def _align4(n: int) -> int:
    return (n + 3) & ~3


def _name(raw: bytes) -> str:
    # latin-1 maps every byte to one code point: lossless for odd names in odd blobs
    return raw.decode("latin-1")


def strlist(value: bytes | None) -> list[str] | None:
    """A property value as a string list (``fdt_stringlist_get``): None when absent or not NUL-terminated."""
    if value is None:
        return None
    if value and not value.endswith(b"\0"):
        return None
    return [_name(s) for s in value[:-1].split(b"\0")] if value else []


@dataclass
class Prop:
    """One property. ``nameoff`` is the string-table offset (None until written)."""

    name: str
    value: bytes
    nameoff: int | None = None


@dataclass
class Node:
    name: str
    props: list[Prop] = field(default_factory=list)
    children: list[Node] = field(default_factory=list)

    # -- properties -------------------------------------------------------
    def prop(self, name: str) -> Prop | None:
        for p in self.props:
            if p.name == name:
                return p
        return None

    def get(self, name: str) -> bytes | None:
        p = self.prop(name)
        return None if p is None else p.value

    def get_str(self, name: str) -> str | None:
        """A string property as libfdt callers read it: up to the first NUL."""
        value = self.get(name)
        if value is None:
            return None
        return _name(value.split(b"\0", 1)[0])

    def get_u32(self, name: str) -> int | None:
        value = self.get(name)
        if value is None or len(value) != 4:
            return None
        return int(_U32.unpack(value)[0])

    def get_strlist(self, name: str) -> list[str] | None:
        """``fdt_stringlist_count``/``_get`` semantics: None when absent or not NUL-terminated."""
        return strlist(self.get(name))

    # -- children ---------------------------------------------------------
    def child(self, name: str) -> Node | None:
        """Exact-name child."""
        for c in self.children:
            if c.name == name:
                return c
        return None

    def subnode(self, name: str) -> Node | None:
        """libfdt ``fdt_subnode_offset``: exact name, or ``name@unit`` when ``name`` has no '@'.

        U-Boot resolves image references this way, so the signer must too.
        """
        for c in self.children:
            if c.name == name:
                return c
            if "@" not in name and c.name.startswith(name + "@"):
                return c
        return None

    def walk(self, prefix: str = "") -> Iterator[tuple[str, Node]]:
        """(path, node) for this node and all below it, depth first, in blob order."""
        path = "/" if not prefix and not self.name else f"{prefix}/{self.name}"
        yield path, self
        for c in self.children:
            yield from c.walk("" if path == "/" else path)


@dataclass
class Fdt:
    root: Node
    strings: bytearray
    reserve: list[tuple[int, int]] = field(default_factory=list)
    version: int = 17
    last_comp_version: int = 16
    boot_cpuid_phys: int = 0
    free_space: bytes = b""  # bytes between the end of the strings block and totalsize (kept as they are)

    # -- reading ----------------------------------------------------------
    @classmethod
    def parse(cls, blob: bytes | bytearray | memoryview, what: str = "input") -> Fdt:
        return cls.parse_with_tags(blob, what)[0]

    @classmethod
    def parse_with_tags(
        cls, blob: bytes | bytearray | memoryview, what: str = "input"
    ) -> tuple[Fdt, list[Tag]]:
        """``parse``, and the structure block's tags as walked (for a ``RegionIndex`` of the same bytes)."""
        data = bytes(blob)
        hdr = read_header(data, what)
        totalsize, off_struct, off_strings, off_rsv, version, last_comp, cpuid, size_strings, _ = hdr
        strings = data[off_strings : off_strings + size_strings]
        reserve = _read_reserve(data, off_rsv, off_struct if off_struct > off_rsv else totalsize, what)
        root = None
        stack: list[Node] = []
        seen_child: list[bool] = []
        names: dict[int, str] = {}  # one string per name offset: many properties may share a (long) name
        tags = list(iter_tags(data, hdr, what))
        for tag, offset, _nxt, name, nameoff, value in tags:
            if tag == FDT_BEGIN_NODE:
                name = name or b""
                if root is not None and not stack:
                    raise FdtError(f"{what}: more than one root node", "the file is not a valid DTB")
                node = Node(_name(name))
                if stack:
                    stack[-1].children.append(node)
                    seen_child[-1] = True
                else:
                    if name:
                        raise FdtError(f"{what}: the root node has a name", "the file is not a valid DTB")
                    root = node
                stack.append(node)
                seen_child.append(False)
            elif tag == FDT_END_NODE:
                stack.pop()
                seen_child.pop()
            elif tag == FDT_PROP:
                if seen_child[-1]:
                    raise FdtError(
                        f"{what}: property at offset {offset} follows a subnode",
                        "the file is not a valid DTB (properties must precede subnodes)",
                    )
                nameoff = nameoff or 0
                pname = names.get(nameoff)
                if pname is None:
                    pname = names[nameoff] = _name(_string_at(strings, nameoff, what))
                stack[-1].props.append(Prop(pname, value or b"", nameoff))
        if root is None:
            raise FdtError(f"{what}: no root node", "the file is not a valid DTB")
        strings_end = off_strings + size_strings
        free = data[strings_end:totalsize] if strings_end >= off_struct + hdr[8] else b""
        return cls(root, bytearray(strings), reserve, version, last_comp, cpuid, free), tags

    # -- editing ----------------------------------------------------------
    def string_offset(self, name: str) -> int:
        """libfdt ``fdt_find_add_string_``: reuse any ``name\\0`` in the table, else append."""
        raw = name.encode("latin-1") + b"\0"
        pos = bytes(self.strings).find(raw)
        if pos >= 0:
            return pos
        pos = len(self.strings)
        self.strings += raw
        return pos

    def setprop(self, node: Node, name: str, value: bytes) -> None:
        """``fdt_setprop``: replace in place, or add a new property *first* in the node, as libfdt does."""
        p = node.prop(name)
        if p is not None:
            p.value = bytes(value)
            return
        node.props.insert(0, Prop(name, bytes(value), self.string_offset(name)))

    def setprop_str(self, node: Node, name: str, value: str) -> None:
        self.setprop(node, name, value.encode() + b"\0")

    def setprop_u32(self, node: Node, name: str, value: int) -> None:
        self.setprop(node, name, _U32.pack(value & 0xFFFFFFFF))

    def setprop_strlist(self, node: Node, name: str, values: Iterable[str]) -> None:
        self.setprop(node, name, b"".join(v.encode() + b"\0" for v in values))

    def delprop(self, node: Node, name: str) -> None:
        node.props = [p for p in node.props if p.name != name]

    def add_subnode(self, parent: Node, name: str) -> Node:
        if parent.child(name) is not None:
            raise FdtError(f"node '{name}' already exists")
        node = Node(name)
        parent.children.insert(0, node)  # libfdt's fdt_add_subnode: right after the parent's properties
        return node

    def ensure_subnode(self, parent: Node, name: str) -> Node:
        return parent.child(name) or self.add_subnode(parent, name)

    def node(self, path: str) -> Node | None:
        """Exact-name lookup of an absolute path ('/images/kernel-1')."""
        node = self.root
        for part in (p for p in path.split("/") if p):
            found = node.child(part)
            if found is None:
                return None
            node = found
        return node

    # -- writing ----------------------------------------------------------
    def _emit(self, node: Node, parts: list[bytes], depth: int, hollow: Collection[str]) -> None:
        if depth >= MAX_DEPTH:
            raise FdtError(f"tree deeper than {MAX_DEPTH} levels")
        name = node.name.encode("latin-1") + b"\0"
        parts.append(_U32.pack(FDT_BEGIN_NODE) + name + b"\0" * (_align4(len(name)) - len(name)))
        for p in node.props:
            if p.nameoff is None:
                p.nameoff = self.string_offset(p.name)
            value = b"" if p.name in hollow else p.value
            parts.append(struct.pack(">III", FDT_PROP, len(value), p.nameoff))
            parts.append(value)
            pad = _align4(len(value)) - len(value)
            if pad:
                parts.append(b"\0" * pad)
        for c in node.children:
            self._emit(c, parts, depth + 1, hollow)
        parts.append(_U32.pack(FDT_END_NODE))

    def to_bytes(self, hollow: Collection[str] = ()) -> bytes:
        """Header, reservations, structure, strings, then any free space the input had.

        The blocks are written back to back, as dtc and ``fdt_pack`` lay them out. ``hollow``
        names properties written empty: a blob for hashing regions that leave them out (a FIT
        configuration signature leaves out ``data``), without copying a 32 MiB kernel to do so.
        """
        return b"".join(self.to_parts(hollow))

    def to_parts(self, hollow: Collection[str] = ()) -> list[bytes]:
        """The pieces ``to_bytes`` joins, in order: a caller that appends more (a FIT's external
        data) joins them once, so that a large property value is copied once (a 32 MiB kernel
        was copied twice per blob when the structure block was joined first)."""
        body: list[bytes] = []
        self._emit(self.root, body, 0, hollow)  # first: it may append names to the strings block
        body.append(_U32.pack(FDT_END))
        size_struct = sum(map(len, body))
        rsv = b"".join(struct.pack(">QQ", a, s) for a, s in self.reserve) + b"\0" * 16
        off_rsv = HEADER_SIZE
        off_struct = off_rsv + len(rsv)
        off_strings = off_struct + size_struct
        total = off_strings + len(self.strings) + len(self.free_space)
        header = _HEADER.pack(
            FDT_MAGIC,
            total,
            off_struct,
            off_strings,
            off_rsv,
            self.version,
            self.last_comp_version,
            self.boot_cpuid_phys,
            len(self.strings),
            size_struct,
        )
        return [header, rsv, *body, bytes(self.strings), self.free_space]


Header = tuple[int, int, int, int, int, int, int, int, int]


def read_header(data: bytes, what: str = "input") -> Header:
    """Check the header like libfdt's ``fdt_check_header``; return its fields (without magic)."""
    if len(data) < HEADER_SIZE:
        raise FdtError(f"{what} is too short to be a device tree ({len(data)} bytes)", _NOT_DTB_HINT)
    fields = _HEADER.unpack_from(data, 0)
    magic, totalsize, off_struct, off_strings, off_rsv, version, last_comp = fields[:7]
    cpuid, size_strings, size_struct = fields[7:]
    if magic != FDT_MAGIC:
        raise FdtError(f"{what} is not a device tree (bad magic 0x{magic:08x})", _NOT_DTB_HINT)
    if version < 16 or last_comp > 17:
        raise FdtError(f"{what}: unsupported device tree version {version} (compatible {last_comp})")
    if totalsize < HEADER_SIZE or totalsize > len(data):
        raise FdtError(
            f"{what}: device tree size {totalsize} does not fit the file ({len(data)} bytes)",
            "the file is truncated or not a device tree",
        )
    if version < 17:
        size_struct = totalsize - off_struct if off_struct < totalsize else 0
    for off, size, block in ((off_struct, size_struct, "structure"), (off_strings, size_strings, "strings")):
        if off < HEADER_SIZE or off > totalsize or size > totalsize - off:
            raise FdtError(f"{what}: {block} block out of bounds", "the file is truncated or corrupt")
    if off_rsv < HEADER_SIZE or off_rsv % 8 or off_rsv > totalsize or off_struct % 4:
        raise FdtError(f"{what}: misaligned or out-of-bounds blocks", "the file is corrupt")
    return (totalsize, off_struct, off_strings, off_rsv, version, last_comp, cpuid, size_strings, size_struct)


_NOT_DTB_HINT = "give a DTB or FIT (compiled with dtc or mkimage)"


def _read_reserve(data: bytes, off: int, limit: int, what: str) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    while True:
        if off + 16 > min(limit, len(data)):
            raise FdtError(f"{what}: unterminated memory reservation block", "the file is corrupt")
        addr, size = struct.unpack_from(">QQ", data, off)
        off += 16
        if addr == 0 and size == 0:
            return out
        out.append((addr, size))


def _string_at(strings: bytes, off: int, what: str) -> bytes:
    if off >= len(strings):
        raise FdtError(f"{what}: property name offset {off} outside the strings block", "the file is corrupt")
    end = strings.find(b"\0", off)
    if end < 0:
        raise FdtError(f"{what}: unterminated property name in the strings block", "the file is corrupt")
    return strings[off:end]


Tag = tuple[int, int, int, "bytes | None", "int | None", "bytes | None"]


def iter_tags(
    data: bytes, hdr: Header | None = None, what: str = "input", values: bool = True
) -> Iterator[Tag]:
    """Walk the structure block: (tag, offset, next_offset, node_name, nameoff, value).

    Offsets are relative to the structure block, as in libfdt. The walk checks
    nesting and that ``FDT_END`` closes the block exactly (``fdt_find_regions``
    does too).
    """
    if hdr is None:
        hdr = read_header(data, what)
    base, size = hdr[1], hdr[8]
    block = memoryview(data)[base : base + size]
    off = 0
    depth = 0
    ended = False
    while True:
        if off + 4 > size:
            raise FdtError(f"{what}: structure block ends without FDT_END", "the file is truncated")
        (tag,) = _U32.unpack_from(block, off)
        nxt = off + 4
        if ended and tag != FDT_END:
            raise FdtError(f"{what}: data after the root node", "the file is corrupt")
        if tag == FDT_BEGIN_NODE:
            end = data.find(b"\0", base + nxt, base + size) - base if nxt < size else -1
            if end < 0:
                raise FdtError(f"{what}: unterminated node name", "the file is corrupt")
            name = bytes(block[nxt:end])
            nxt = _align4(end + 1)
            depth += 1
            if depth > MAX_DEPTH:
                raise FdtError(f"{what}: tree deeper than {MAX_DEPTH} levels", "the file is corrupt")
            yield tag, off, nxt, name, None, None
        elif tag == FDT_END_NODE:
            if depth == 0:
                raise FdtError(f"{what}: unbalanced FDT_END_NODE at {off}", "the file is corrupt")
            depth -= 1
            if depth == 0:
                ended = True
            yield tag, off, nxt, None, None, None
        elif tag == FDT_PROP:
            if depth == 0:
                raise FdtError(f"{what}: property outside any node", "the file is corrupt")
            if nxt + 8 > size:
                raise FdtError(f"{what}: truncated property at {off}", "the file is corrupt")
            length, nameoff = struct.unpack_from(">II", block, nxt)
            start = nxt + 8
            if length > size - start:
                raise FdtError(f"{what}: property at {off} runs past the structure block", "corrupt file")
            value = bytes(block[start : start + length]) if values else None
            nxt = _align4(start + length)
            yield tag, off, nxt, None, nameoff, value
        elif tag == FDT_NOP:
            yield tag, off, nxt, None, None, None
        elif tag == FDT_END:
            if depth != 0 or not ended:
                raise FdtError(f"{what}: FDT_END inside a node", "the file is truncated or corrupt")
            if nxt != size:
                raise FdtError(f"{what}: structure block size does not match FDT_END", "the file is corrupt")
            yield tag, off, nxt, None, None, None
            return
        else:
            raise FdtError(f"{what}: unknown tag 0x{tag:x} at offset {off}", "the file is corrupt")
        if nxt > size:
            raise FdtError(f"{what}: structure block overrun at {off}", "the file is truncated or corrupt")
        off = nxt


def find_regions(
    data: bytes,
    include: Iterable[str],
    exclude_props: Iterable[str],
    add_string_tab: bool,
) -> list[tuple[int, int]]:
    """The regions (absolute offset, size) U-Boot's ``fdt_find_regions`` selects.

    U-Boot walks the structure block keeping, per depth, how "wanted" the current node
    is: 2 for a node on the ``include`` list (all its properties except
    ``exclude_props``, NOP tags, and its begin/end tags), 1 for a direct child of
    such a node (only its begin/end tags), 0 otherwise. FDT_END is always
    included, and when ``add_string_tab`` the last region runs on over the whole
    strings block. Adjacent regions merge. One detail of the original kept on
    purpose: an excluded FDT_END_NODE directly after included data ends the
    region *after* itself (``stop_at`` is the next offset for that tag).

    ``RegionIndex`` gives the same regions; index a blob once to ask for many node lists.
    """
    return RegionIndex(data).regions(include, exclude_props, add_string_tab)


@dataclass
class _IndexedNode:
    path: str
    begin: int  # tag index of FDT_BEGIN_NODE
    parent: int  # node number, -1 for the root
    end: int = -1  # tag index of FDT_END_NODE
    entries: list[tuple[bool, int]] = field(default_factory=list)  # (is a node, node number or tag index)


class RegionIndex:
    """A blob's structure block indexed once, for ``fdt_find_regions`` over many node lists.

    ``regions(include, ...)`` costs what the node list selects (the included nodes' own
    properties and children, and the path down to them), not a walk of the whole blob: a
    FIT verifier asks for the regions of every configuration, and a walk per configuration
    is quadratic in the FIT's size. The result is the one ``fdt_find_regions`` gives: the
    included tags are the same, a run of them ends where the walk's first excluded tag
    puts its ``stop_at``, and a run starting right where the previous region ended merges
    with it.
    """

    def __init__(self, data: bytes, tags: list[Tag] | None = None) -> None:
        """Index ``data``; ``tags``: its structure block as ``iter_tags`` walked it (saves a walk)."""
        hdr = read_header(data)
        self.base = hdr[1]
        self.strings_size = hdr[7]
        strings = data[hdr[2] : hdr[2] + hdr[7]]
        names: dict[int, str] = {}
        self.tags: list[tuple[int, int, int]] = []  # (tag, offset, next offset)
        self.prop_names: dict[int, str] = {}  # tag index -> property name
        self.nodes: list[_IndexedNode] = []
        self.by_path: dict[str, list[int]] = {}
        self.end_tag = -1
        self.last_selected = 0
        stack: list[int] = []
        parts: list[str] = []
        for tag, offset, nxt, name, nameoff, _value in tags or iter_tags(data, hdr, values=False):
            i = len(self.tags)
            self.tags.append((tag, offset, nxt))
            if tag == FDT_BEGIN_NODE:
                parts.append(_name(name or b""))
                path = "/" + "/".join(parts[1:])
                number = len(self.nodes)
                self.nodes.append(_IndexedNode(path, i, stack[-1] if stack else -1))
                if stack:
                    self.nodes[stack[-1]].entries.append((True, number))
                self.by_path.setdefault(path, []).append(number)
                stack.append(number)
            elif tag == FDT_END_NODE:
                self.nodes[stack.pop()].end = i
                parts.pop()
            elif tag in (FDT_PROP, FDT_NOP):
                self.nodes[stack[-1]].entries.append((False, i))
                if tag == FDT_PROP:
                    off = nameoff or 0
                    pname = names.get(off)
                    if pname is None:
                        pname = names[off] = _name(_string_at(strings, off, "input"))
                    self.prop_names[i] = pname
            elif tag == FDT_END:
                self.end_tag = i

    def regions(
        self, include: Iterable[str], exclude_props: Iterable[str], add_string_tab: bool
    ) -> list[tuple[int, int]]:
        inc = set(include)
        exc = set(exclude_props)
        # the nodes a want-0 or want-1 parent must still descend to: included ones and their ancestors
        on_path: set[str] = set()
        for p in inc:
            while p not in on_path:
                on_path.add(p)
                if p == "/":
                    break
                p = p.rsplit("/", 1)[0] or "/"
        kids: dict[int, list[int]] = {}
        for p in on_path:
            for number in self.by_path.get(p, ()):
                kids.setdefault(self.nodes[number].parent, []).append(number)
        for lst in kids.values():
            lst.sort()
        selected: list[int] = []  # tag indices, in blob order

        def visit(number: int, parent_want: int) -> None:
            node = self.nodes[number]
            if node.path in inc:
                want = 2
            else:
                want = parent_want - 1 if parent_want else 0
            if not want and node.path not in on_path:
                return  # neither it nor anything below it is selected
            if want:
                selected.append(node.begin)
            if want >= 2:
                for is_node, x in node.entries:
                    if is_node:
                        visit(x, want)
                    elif self.tags[x][0] == FDT_NOP or self.prop_names[x] not in exc:
                        selected.append(x)
            else:
                for child in kids.get(number, ()):
                    visit(child, want)
            if want:
                selected.append(node.end)

        for root in kids.get(-1, ()):
            visit(root, 0)
        selected.append(self.end_tag)  # FDT_END is always in
        self.last_selected = len(selected)  # what this call cost, for callers that bound their work
        return self._merge(selected, add_string_tab)

    def _stop_at(self, index: int) -> int:
        """Where the walk ends a region at this first excluded tag (the END_NODE quirk included)."""
        tag, offset, nxt = self.tags[index]
        return nxt if tag == FDT_END_NODE else offset

    def _merge(self, selected: list[int], add_string_tab: bool) -> list[tuple[int, int]]:
        base = self.base
        regions: list[list[int]] = []
        start = -1
        prev = -2
        for index in selected:
            if index == prev + 1 and start != -1:
                prev = index
                continue
            if start != -1:
                regions.append([base + start, self._stop_at(prev + 1) - start])
            offset = self.tags[index][1]
            if regions and offset == regions[-1][0] + regions[-1][1] - base:
                start = regions.pop()[0] - base
            else:
                start = offset
            prev = index
        size = self.tags[self.end_tag][2] - start
        if add_string_tab:
            size += self.strings_size
        regions.append([base + start, size])
        return [(o, s) for o, s in regions]


def region_bytes(data: bytes, regions: Iterable[tuple[int, int]]) -> Iterator[bytes]:
    view = memoryview(data)
    for off, size in regions:
        yield bytes(view[off : off + size])
