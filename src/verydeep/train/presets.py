"""The YAML presets that travel with the package: the paper's experiments and the small CPU ones.

They live in ``verydeep/configs/`` (package data, so an installed wheel has them; the checkout's
top-level ``configs`` points there). ``--config`` takes a file path, or, when no such file exists, a
preset's name as :func:`list_presets` prints it: ``paper/D_S256``, ``cpu/small`` (``.yaml`` optional).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from verydeep.errors import ConfigError

#: The folder of the shipped presets.
PRESETS = Path(str(resources.files("verydeep") / "configs"))


def list_presets() -> list[str]:
    """Every shipped preset by name (``paper/A_S256``, ...); files starting with ``_`` are bases, not runs."""
    return sorted(
        str(p.relative_to(PRESETS).with_suffix(""))
        for p in PRESETS.rglob("*.yaml")
        if not p.name.startswith("_")
    )


def preset_summary(name: str) -> str:
    """The first comment line of a preset: what it is for."""
    for line in (PRESETS / f"{name}.yaml").read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def resolve_preset(path: str | Path) -> Path:
    """``path`` itself when it is a file, else the shipped preset of that name; one line when neither."""
    given = Path(path)
    if given.is_file():
        return given
    name = (
        str(path).removesuffix(".yaml").removeprefix("configs/")
    )  # also a checkout's path, installed
    candidate = PRESETS / f"{name}.yaml"
    if candidate.is_file():
        return candidate
    if given.is_dir():
        raise ConfigError(
            f"config file {path} is a folder, not a YAML preset "
            "(`verydeep configs` lists the shipped ones)"
        )
    raise ConfigError(
        f"config file {path} does not exist, and no shipped preset has that name "
        f"(`verydeep configs` lists them: {', '.join(list_presets()[:4])}, ...)"
    )


__all__ = ["PRESETS", "list_presets", "preset_summary", "resolve_preset"]
