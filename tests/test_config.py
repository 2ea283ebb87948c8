"""Typed configuration: one pydantic schema, one-line errors, a fingerprint of every option that changes numbers."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest

from forcedphot.cli import main
from forcedphot.config import ConfigError, ConfigSchema, ForcedPhotConfig, load_config, render_toml
from forcedphot.errors import InputError

# a valid non-default value for every option: each must change the fingerprint, except chunk_size
OTHER_VALUES = {
    "plugins": ("PsfFlux",), "aperture_radii": (3.0, 6.0), "aperture_method": "exact", "max_sinc_radius": 9.0,
    "aperture_error_weights": "linear", "psf_bad_mask_planes": ("NO_DATA", "BAD"), "psf_max_bad_weight_fraction": 0.5,
    "pixel_flag_planes": ("BAD",),
    "footprint_dataset": "scarlet", "missing_footprints": "reference", "noise_replacement": False,
    "noise_seed_multiplier": 3, "noise_offset": 0.5, "undeblended": ("PsfFlux",), "chunk_size": 7,
}
NOT_CHANGING_NUMBERS = {"chunk_size"}  # proven by tests/test_threads.py (chunk sizes and threads, byte for byte)


def test_every_option_is_typed_and_in_the_table():
    assert set(OTHER_VALUES) == {f.name for f in dataclasses.fields(ForcedPhotConfig)} == set(ConfigSchema.model_fields)


@pytest.mark.parametrize("option", OTHER_VALUES)
def test_fingerprint_holds_every_option_that_changes_numbers(option):
    default = ForcedPhotConfig()
    changed = dataclasses.replace(default, **{option: OTHER_VALUES[option]})
    assert getattr(changed, option) != getattr(default, option)
    same = option in NOT_CHANGING_NUMBERS
    assert (changed.fingerprint() == default.fingerprint()) == same, option


def test_values_are_normalised_so_equal_configs_share_a_fingerprint():
    a = ForcedPhotConfig(aperture_radii=[3, 6], plugins=["PsfFlux", "KronFlux"])
    b = ForcedPhotConfig(aperture_radii=(3.0, 6.0), plugins=("KronFlux", "PsfFlux"))
    assert a.aperture_radii == (3.0, 6.0) and isinstance(a.plugins, tuple)
    assert a.fingerprint() == b.fingerprint()
    assert a.with_overrides(noise_offset=1).noise_offset == 1.0


@pytest.mark.parametrize("kw, pattern", [
    ({"noise_replacement": "false"}, "option noise_replacement = 'false': Input should be a valid boolean"),
    ({"noise_replacement": 1}, "option noise_replacement = 1: Input should be a valid boolean"),
    ({"aperture_radii": "36"}, "option aperture_radii = '36': Input should be a valid tuple"),
    ({"chunk_size": -5}, "option chunk_size = -5: Input should be greater than 0"),
    ({"max_sinc_radius": "12"}, "option max_sinc_radius = '12': Input should be a valid number"),
])
def test_python_construction_and_replace_are_validated(kw, pattern):
    with pytest.raises(ConfigError, match=pattern):
        ForcedPhotConfig(**kw)
    with pytest.raises(InputError, match=pattern):  # a ConfigError is an InputError: exit 2, one line
        dataclasses.replace(ForcedPhotConfig(), **kw)


def test_template_round_trip(tmp_path, capsys):
    assert main(["config", "--template"]) == 0
    text = capsys.readouterr().out
    assert text.count("\n# ") >= len(OTHER_VALUES)  # every option commented
    path = tmp_path / "forcedphot.toml"
    path.write_text(text)
    assert set(tomllib.loads(text)) == set(OTHER_VALUES)
    assert load_config(path) == ForcedPhotConfig()
    edited = path.read_text().replace("noise_replacement = true", "noise_replacement = false")
    path.write_text(edited)
    assert load_config(path) == ForcedPhotConfig(noise_replacement=False)


def test_config_prints_the_validated_options_as_toml(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text('aperture_method = "exact"\nchunk_size = 64\n')
    assert main(["config", "--config", str(path), "--radii", "3,6", "--no-noise-replacement"]) == 0
    text = capsys.readouterr().out
    assert load_config(None, **tomllib.loads(text)) == ForcedPhotConfig(
        aperture_method="exact", chunk_size=64, aperture_radii=(3.0, 6.0), noise_replacement=False)
    assert render_toml(ForcedPhotConfig(), comments=False).count("\n") == len(OTHER_VALUES) + 2


def test_run_accepts_the_template(measured_tiny_repo, tmp_path, capsys):
    assert main(["config", "--template"]) == 0
    path = tmp_path / "t.toml"
    path.write_text(capsys.readouterr().out)
    assert main(["status", "--repo", str(measured_tiny_repo), "--config", str(path)]) == 0
    assert "16 up-to-date" in capsys.readouterr().out  # same fingerprint as the defaults


def test_command_line_errors_name_the_command_line(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("chunk_size = 8\n")
    with pytest.raises(ConfigError, match=r"^command line: option aperture_method = 'x'"):
        load_config(path, aperture_method="x")
    path.write_text("chunk_size = 0\n")
    with pytest.raises(ConfigError, match=rf"^{path}: option chunk_size = 0"):
        load_config(path, aperture_method="exact")


def test_the_config_knows_the_plugins_by_name_without_importing_them():
    """A config is validated against config.PLUGIN_NAMES (status does not import the kernels): the
    registry's names (in the order configs have always listed them: the registry's follows its modules)."""
    import subprocess
    import sys

    from forcedphot.config import PLUGIN_NAMES
    from forcedphot.plugins import PLUGINS

    assert sorted(PLUGIN_NAMES) == sorted(PLUGINS) and len(set(PLUGIN_NAMES)) == len(PLUGIN_NAMES)
    with pytest.raises(ConfigError, match=r"unknown plugin\(s\) \['Nope'\]"):
        ForcedPhotConfig(plugins=("PsfFlux", "Nope"))
    probe = "import sys; from forcedphot.config import ForcedPhotConfig; ForcedPhotConfig(); print('numba' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == "False\n"
