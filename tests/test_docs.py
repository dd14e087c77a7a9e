"""The README stays true: every setting is in its table, and the quick start is there."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import AliasChoices

from shared.settings import Settings

README = Path(__file__).resolve().parent.parent / "README.md"


def env_names() -> list[str]:
    names = []
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.append(str(alias.choices[0]))
        else:
            names.append("METERGATE_" + name.upper())
    return names


def test_every_setting_is_in_the_readme_settings_table() -> None:
    table_rows = [line for line in README.read_text().splitlines() if line.startswith("| `")]
    documented = {m.group(1) for line in table_rows if (m := re.match(r"\| `([A-Z_]+)`", line))}
    missing = [name for name in env_names() if name not in documented]
    assert not missing, f"settings missing from the README table: {missing}"


def test_every_setting_has_a_description() -> None:
    undocumented = [n for n, f in Settings.model_fields.items() if not f.description]
    assert not undocumented


def test_readme_leads_with_demo_and_test() -> None:
    text = README.read_text()
    quick_start = text[: text.index("## ", text.index("make demo"))]
    assert "make demo" in quick_start and "make test" in quick_start
