"""Docs that are tested: every ```python block of README.md and docs/*.md runs against a real
small build, and docs/recipe.md is generated from the recipe model and kept current.

Placeholders in blocks: `BUILD` is a complete digits build directory (made here), `OUT` a
new, empty output path. Regenerate the recipe reference with
`.venv/bin/python -m tests.test_docs --write`.
"""

from __future__ import annotations

import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from synthgen.schemas.recipe import Recipe, RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPE_DOC = ROOT / "docs" / "recipe.md"
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks() -> list[tuple[str, str]]:
    """(id, code) of every ```python block in the docs, in file order."""
    out = []
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        for m in BLOCK.finditer(text):
            line = text[: m.start()].count("\n") + 1
            out.append((f"{path.relative_to(ROOT)}:{line}", m.group(1)))
    return out


@pytest.fixture(scope="module")
def docs_build(digits_build: Path) -> Path:
    """A complete digits build (the golden one, `count_per_class=3`); blocks only read it."""
    return digits_build


@pytest.mark.parametrize(("where", "code"), python_blocks(), ids=[b[0] for b in python_blocks()])
def test_python_block_runs(
    where: str, code: str, docs_build: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets

    monkeypatch.chdir(ROOT)  # blocks use repository paths such as recipes/digits.yaml
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")
    source = code.replace('"OUT"', repr(str(tmp_path / "out"))).replace("BUILD", str(docs_build))
    exec(compile(source, where, "exec"), {"__name__": "__doc_block__"})


def test_docs_have_blocks_for_reading_and_building() -> None:
    blocks = dict(python_blocks())
    assert any("BUILD" in c for c in blocks.values()), "a block reads a build"
    assert any("synthgen.build(" in c for c in blocks.values()), "a block builds"


# -- the recipe reference ----------------------------------------------------------------


def _type_name(ann: Any) -> str:
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return " \\| ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in args)
    if origin in (list, tuple, set, frozenset, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args if a is not Ellipsis)}]"
    if ann is type(None):
        return "null"
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return f"[{ann.__name__}](#{ann.__name__.lower()})"
    return getattr(ann, "__name__", str(ann))


def _constraints(info: Any) -> str:
    parts = []
    for m in info.metadata:
        for attr in ("ge", "gt", "le", "lt", "min_length", "max_length", "pattern"):
            value = getattr(m, attr, None)
            if value is not None:
                parts.append(f"{attr} {value}")
    return f" ({', '.join(parts)})".replace("|", "\\|") if parts else ""


def _models(model: type[BaseModel], seen: list[type[BaseModel]]) -> list[type[BaseModel]]:
    if model in seen:
        return seen
    seen.append(model)

    def nested(ann: Any) -> list[type[BaseModel]]:
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            return [ann]
        return [m for a in typing.get_args(ann) for m in nested(a)]

    for info in model.model_fields.values():
        for m in nested(info.annotation):
            _models(m, seen)
    return seen


def _default(info: Any) -> str:
    if info.is_required():
        return "required"
    value = info.default_factory() if info.default_factory is not None else info.default
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        return "(its defaults)"
    text = repr(value)
    return f"`{text if len(text) < 40 else text[:37] + '...'}`"


def recipe_reference() -> str:
    """docs/recipe.md: every recipe field (type, default, meaning), from the pydantic model."""
    lines = [
        "# Recipe reference",
        "",
        "Generated from `synthgen.schemas.recipe.Recipe` by `tests/test_docs.py` "
        "(`.venv/bin/python -m tests.test_docs --write`); a test fails when it is stale.",
        'Unknown keys are rejected (with a "did you mean" for a near miss).',
        "Set any field from the command line with `--set dotted.key=value`.",
    ]
    for model in _models(Recipe, []):
        lines += ["", f"## {model.__name__}", ""]
        doc = (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        if doc and model.__module__.startswith("synthgen.schemas.recipe"):
            lines += [doc, ""]
        lines += ["| field | type | default | meaning |", "|---|---|---|---|"]
        for name, info in model.model_fields.items():
            meaning = (info.description or "").replace("|", "\\|").replace("\n", " ")
            ann = _type_name(info.annotation) + _constraints(info)
            lines.append(f"| `{info.alias or name}` | {ann} | {_default(info)} | {meaning} |")
    return "\n".join(lines) + "\n"


def test_recipe_reference_is_current() -> None:
    assert RECIPE_DOC.read_text(encoding="utf-8") == recipe_reference(), (
        "docs/recipe.md is stale: run .venv/bin/python -m tests.test_docs --write"
    )


def test_recipe_reference_documents_every_top_level_field() -> None:
    text = recipe_reference()
    for name in Recipe.model_fields:
        assert f"| `{name}` |" in text


def test_unknown_recipe_key_suggests_the_closest_field() -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe(ROOT / "recipes" / "digits.yaml", ["count_per_clas=3", "checks.clip_scor=null"])
    text = str(err.value)
    assert "count_per_clas: unknown field (did you mean 'count_per_class'?)" in text
    assert "checks.clip_scor: unknown field (did you mean 'clip_score'?)" in text


if __name__ == "__main__" and "--write" in sys.argv:
    RECIPE_DOC.write_text(recipe_reference(), encoding="utf-8")
    print(f"wrote {RECIPE_DOC}")


def test_docs_name_the_parquet_layout_version_the_code_writes() -> None:
    from synthgen.schemas.records import SCHEMA_NAME, SCHEMA_VERSION

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    output = (ROOT / "docs" / "output.md").read_text(encoding="utf-8")
    assert f"`{SCHEMA_NAME}` v{SCHEMA_VERSION}" in readme
    assert f"(`{SCHEMA_NAME}`, version {SCHEMA_VERSION})" in output
    for text in (readme, output):
        others = {
            int(v) for v in re.findall(rf"{re.escape(SCHEMA_NAME)}`?,? v(?:ersion )?(\d+)", text)
        }
        assert others <= {SCHEMA_VERSION}, f"a stale layout version is named: {others}"
