"""docs/settings.md names every setting: the README's Configuration lists only the groups, and 74 settings were
named nowhere a newcomer would look (a review counted them)."""

from pathlib import Path

from finsent.settings import Settings, env_var, reference

DOC = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def _leaves(model, path=()):
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            yield from _leaves(annotation, (*path, name))
        else:
            yield (*path, name)


def test_the_settings_reference_is_current_and_names_every_setting_and_its_variable():
    assert DOC.read_text() == reference() + "\n", "stale: run .venv/bin/python scripts/settings_reference.py"
    text = DOC.read_text()
    for path in _leaves(Settings):
        assert f"`{'.'.join(path)}`" in text and f"`{env_var(*path)}`" in text, path
