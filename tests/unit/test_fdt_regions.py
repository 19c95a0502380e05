"""``RegionIndex`` selects exactly the regions of U-Boot's ``fdt_find_regions`` walk, at any scale.

The reference below is the tag-by-tag walk of ``boot/fdt_region.c`` (hsmsign's implementation until
the index replaced it, and the one the fdtgrep tests in test_fdt.py and tests/integration/test_fit.py
checked against U-Boot). Random trees, NOP tags, duplicate and '@' names, include lists with and
without '/', paths that exist nowhere: both give the same regions.
"""

from __future__ import annotations

import gc
import struct
import time
from collections.abc import Iterable

from hsmsign.formats.fdt import (
    FDT_BEGIN_NODE,
    FDT_END,
    FDT_END_NODE,
    FDT_NOP,
    FDT_PROP,
    Fdt,
    Node,
    RegionIndex,
    _name,
    _string_at,
    find_regions,
    iter_tags,
    read_header,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def reference_find_regions(
    data: bytes, include: Iterable[str], exclude_props: Iterable[str], add_string_tab: bool
) -> list[tuple[int, int]]:
    hdr = read_header(data)
    base = hdr[1]
    strings = data[hdr[2] : hdr[2] + hdr[7]]
    inc = set(include)
    exc = set(exclude_props)
    regions: list[list[int]] = []
    stack: list[int] = []
    path_parts: list[str] = []
    want = 0
    start = -1
    nextoffset = 0
    for tag, offset, nxt, name, nameoff, _value in iter_tags(data, hdr, values=False):
        nextoffset = nxt
        stop_at = nxt
        include_it = 0
        if tag == FDT_PROP:
            include_it = 1 if want >= 2 else 0
            stop_at = offset
            if _name(_string_at(strings, nameoff or 0, "input")) in exc:
                include_it = 0
        elif tag == FDT_NOP:
            include_it = 1 if want >= 2 else 0
            stop_at = offset
        elif tag == FDT_BEGIN_NODE:
            path_parts.append(_name(name or b""))
            path = "/" + "/".join(path_parts[1:])
            stack.append(want)
            if want == 1:
                stop_at = offset
            if path in inc:
                want = 2
            elif want:
                want -= 1
            else:
                stop_at = offset
            include_it = want
        elif tag == FDT_END_NODE:
            include_it = want
            want = stack.pop()
            path_parts.pop()
        elif tag == FDT_END:
            include_it = 1
        if include_it and start == -1:
            if regions and offset == regions[-1][0] + regions[-1][1] - base:
                start = regions.pop()[0] - base
            else:
                start = offset
        if not include_it and start != -1:
            regions.append([base + start, stop_at - start])
            start = -1
    size = nextoffset - start
    if add_string_tab:
        size += hdr[7]
    regions.append([base + start, size])
    return [(o, s) for o, s in regions]


NAMES = ["a", "b", "a@1", "images", "k", "hash-1", "x/y"]
PROPS = ["data", "value", "algo", "data-size", "description", "type"]


@st.composite
def trees(draw: st.DrawFn) -> tuple[bytes, list[str]]:
    fdt = Fdt(Node(""), bytearray())
    paths = ["/"]

    def grow(node: Node, path: str, depth: int) -> None:
        for _ in range(draw(st.integers(0, 3))):
            name = draw(st.sampled_from(PROPS))
            fdt.setprop(node, name, draw(st.binary(max_size=9)))
        if depth >= 4:
            return
        for _ in range(draw(st.integers(0, 3))):
            name = draw(st.sampled_from(NAMES))
            child = Node(name)  # duplicate sibling names on purpose: the walk matches paths as strings
            node.children.append(child)
            child_path = ("" if path == "/" else path) + "/" + name
            paths.append(child_path)
            grow(child, child_path, depth + 1)

    grow(fdt.root, "/", 0)
    blob = bytearray(fdt.to_bytes())
    # turn some properties into NOP tags, as fdt_nop_property leaves them
    hdr = read_header(bytes(blob))
    props = [(off, nxt) for tag, off, nxt, *_ in iter_tags(bytes(blob), hdr) if tag == FDT_PROP]
    for off, nxt in draw(st.lists(st.sampled_from(props), max_size=3)) if props else []:
        for pos in range(hdr[1] + off, hdr[1] + nxt, 4):
            blob[pos : pos + 4] = struct.pack(">I", FDT_NOP)
    return bytes(blob), paths


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees(), st.data())
def test_same_regions_as_the_walk(tree: tuple[bytes, list[str]], data: st.DataObject) -> None:
    blob, paths = tree
    include = data.draw(st.lists(st.sampled_from([*paths, "/nowhere", "/a/zz", "images"]), max_size=6))
    exclude = data.draw(st.lists(st.sampled_from(PROPS), max_size=3))
    index = RegionIndex(blob)
    for strings in (True, False):
        expected = reference_find_regions(blob, include, exclude, strings)
        assert index.regions(include, exclude, strings) == expected
        assert find_regions(blob, include, exclude, strings) == expected


def test_many_node_lists_cost_what_they_select() -> None:
    """One index, a node list per configuration: linear in the blob, where one walk each was quadratic."""

    def blob_with(n: int) -> bytes:
        fdt = Fdt(Node(""), bytearray())
        images = Node("images")
        confs = Node("configurations")
        fdt.root.children += [images, confs]
        for i in range(n):
            img = Node(f"img-{i}", children=[Node("hash-1")])
            fdt.setprop(img, "data", b"x" * 8)
            images.children.append(img)
            conf = Node(f"conf-{i}")
            fdt.setprop(conf, "kernel", f"img-{i}\0".encode())
            confs.children.append(conf)
        return fdt.to_bytes()

    def seconds(n: int) -> float:
        blob = blob_with(n)
        best = float("inf")
        for _ in range(2):
            gc.collect()
            gc.disable()  # the collector's pauses grow with the heap; this measures the algorithm
            try:
                start = time.perf_counter()
                index = RegionIndex(blob)
                for i in range(n):
                    conf, img = f"/configurations/conf-{i}", f"/images/img-{i}"
                    index.regions(["/", conf, img, img + "/hash-1"], ["data"], False)
                best = min(best, time.perf_counter() - start)
            finally:
                gc.enable()
        return best

    small, big = seconds(1000), seconds(4000)
    # 4x the configurations, each over a 4x larger blob: about 4x the time (16x for a walk each)
    assert big < 7 * small + 0.05, (small, big)
