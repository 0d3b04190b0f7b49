"""Reading recipe YAML safely: no tags, no duplicate keys, a bounded document."""

from __future__ import annotations

from typing import Any

import yaml

from synthgen.schemas.recipe.common import MAX_YAML_DEPTH, MAX_YAML_NODES


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses duplicate mapping keys (PyYAML silently keeps the last)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,  # type: ignore[arg-type]
)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def check_yaml_budget(
    root: yaml.Node, max_nodes: int = MAX_YAML_NODES, max_depth: int = MAX_YAML_DEPTH
) -> int:
    """The number of nodes `root` expands to, counting each alias use in full; refuse more
    than `max_nodes`, nesting deeper than `max_depth`, and recursive aliases.

    Aliases share one parsed node, so the count is memoised per node: an alias bomb costs
    its parsed size here, not its expanded size.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # on the current path: meeting one again is a cycle
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 0, False)]
    while stack:
        node, depth, finished = stack.pop()
        nid = id(node)
        if finished:
            open_nodes.discard(nid)
            size = 1 + sum(sizes[id(c)] for c in _children(node))
            if size > max_nodes:
                raise yaml.YAMLError(
                    f"the document expands to more than {max_nodes} YAML nodes "
                    f"(anchors and aliases counted in full), near {node.start_mark}"
                )
            sizes[nid] = size
            continue
        if nid in sizes:
            continue
        if nid in open_nodes:
            raise yaml.YAMLError(f"recursive alias, near {node.start_mark}")
        if depth > max_depth:
            raise yaml.YAMLError(f"nested deeper than {max_depth} levels, near {node.start_mark}")
        open_nodes.add(nid)
        stack.append((node, depth, True))
        stack += [(c, depth + 1, False) for c in _children(node) if id(c) not in sizes]
    return sizes[id(root)]


def safe_load(text: str, name: str | None = None) -> Any:
    """`yaml.safe_load` that also refuses duplicate keys (any `!!python/...` tag is an error)
    and documents that expand beyond MAX_YAML_NODES nodes or MAX_YAML_DEPTH levels.
    `name` (the file, or the `--set` item) is what error marks say the text came from.
    """
    loader = _UniqueKeyLoader(text)
    if name is not None:
        loader.name = name  # marks made from here on name it, not "<unicode string>"
    try:
        try:
            node = loader.get_single_node()  # type: ignore[no-untyped-call]
        except RecursionError:
            raise yaml.YAMLError(f"nested deeper than {MAX_YAML_DEPTH} levels") from None
        if node is None:
            return None
        check_yaml_budget(node)
        return loader.construct_document(node)  # type: ignore[no-untyped-call]
    finally:
        loader.dispose()  # type: ignore[no-untyped-call]
