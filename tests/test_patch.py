"""Patches: the shipped ones load; invalid ones get one line naming file, key, found and allowed."""

from __future__ import annotations

import pytest

from liveart.cli import main
from liveart.errors import PatchError
from liveart.patch import PATCH_DIR, available_patches, load_patch, patch_from_dict
from liveart.synth.presets import BUILTIN_PRESETS


def test_every_shipped_patch_loads():
    names = available_patches()
    assert "default" in names
    for name in names:
        patch = load_patch(name)
        assert len(patch.channels) == 16
        for ch in patch.channels:
            assert ch.preset in patch.presets


def test_default_patch_is_used_when_none_is_given():
    assert load_patch(None).source == str(PATCH_DIR / "default.toml")


def test_patch_values_reach_the_configuration(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("""
[audio]
sample_rate = 44100
polyphony = 12
pitch_bend_range = 12
[presets.glass]
base = "organ"
harmonics = [1, 0, 0.5]
release = 1.5
[channels.default]
preset = "glass"
pan = -0.5
[channels.3]
preset = "pluck"
[[cc]]
number = 1
param = "brightness"
min = 0.2
max = 0.9
channel = 3
""")
    patch = load_patch(path)
    assert patch.audio.sample_rate == 44100 and patch.audio.polyphony == 12
    assert patch.audio.pitch_bend_range == 12.0
    assert patch.presets["glass"].harmonics == (1.0, 0.0, 0.5)
    assert patch.presets["glass"].release_seconds == 1.5
    assert patch.channels[0].preset == "glass" and patch.channels[0].pan == -0.5
    assert patch.channels[2].preset == "pluck"
    assert patch.channels[9].preset == "noise_hit"  # GM percussion channel unless the patch says otherwise
    mapping = [m for m in patch.cc if m.control == 1][0]
    assert (mapping.param, mapping.low, mapping.high, mapping.channel) == ("brightness", 0.2, 0.9, 2)
    assert mapping.value(127) == pytest.approx(0.9)
    assert {m.control for m in patch.cc} >= {7, 10, 11, 74}


BAD_PATCHES = [
    ("[audio]\nsample_rate = 12345\n", "audio.sample_rate", "12345", "one of 22050"),
    ("[audio]\npolyphony = 0\n", "audio.polyphony", "0", "an integer from 1 to 128"),
    ("[audio]\npolyphony = 'many'\n", "audio.polyphony", "'many'", "an integer"),
    ("[audio]\ngain_db = 99\n", "audio.gain_db", "99", "a number from -60 to 12"),
    ("[audio]\nturbo = true\n", "audio.turbo", "True", "no such key"),
    ("[channels.default]\npreset = 'kazoo'\n", "channels.default.preset", "'kazoo'", "one of saw_lead"),
    ("[channels.17]\npreset = 'organ'\n", "channels.17", "", "MIDI channel 1 to 16"),
    ("[channels.2]\npan = 3\n", "channels.2.pan", "3", "a number from -1 to 1"),
    ("[channels.2]\nfollow_program = 'yes'\n", "channels.2.follow_program", "'yes'", "true or false"),
    ("[[cc]]\nnumber = 200\nparam = 'volume'\n", "cc[0].number", "200", "an integer from 0 to 119"),
    ("[[cc]]\nnumber = 1\nparam = 'warp'\n", "cc[0].param", "'warp'", "one of volume"),
    ("[[cc]]\nnumber = 1\nparam = 'pan'\nmin = -5\n", "cc[0].min", "-5", "a number from -1 to 1"),
    ("[presets.x]\nbase = 'organ'\nattack = -1\n", "presets.x.attack", "-1", "from 0.0005 to 30"),
    ("[presets.x]\nharmonics = [1, -2]\n", "presets.x.harmonics", "[1, -2]", "non-negative"),
    ("[presets.x]\nbase = 'banjo'\n", "presets.x.base", "'banjo'", "one of saw_lead"),
    ("colour = 'red'\n", "colour", "'red'", "no such key"),
    ("[audio]\ncontrol_hop_frames = 128.0\n", "audio.control_hop_frames", "128.0", "one of 32"),
    ("[audio]\nsample_rate = 48000.0\n", "audio.sample_rate", "48000.0", "one of 22050"),
    ("[[cc]]\nnumber = 64\nparam = 'volume'\n", "cc[0].number", "64", "other than 64 (the sustain pedal)"),
    ("[audio\nsample_rate = 48000\n", "", "", "not valid TOML"),
]


@pytest.mark.parametrize("text,key,found,allowed", BAD_PATCHES)
def test_invalid_patch_names_file_key_value_and_what_is_allowed(tmp_path, text, key, found, allowed):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(PatchError) as info:
        load_patch(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert key in message and found in message and allowed in message
    assert "\n" not in message


def test_invalid_patch_on_the_command_line_is_one_line_and_exit_1(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text("[audio]\npolyphony = 0\n")
    assert main(["render", "x.mid", "-o", str(tmp_path / "o.wav"), "--patch", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("liveart: error: ") and "audio.polyphony" in err


def test_unknown_patch_name_lists_the_available_ones():
    with pytest.raises(PatchError, match="available: .*default"):
        load_patch("no-such-patch")


def test_patch_from_dict_rejects_a_non_table_section():
    with pytest.raises(PatchError, match="audio: found 3; allowed a table"):
        patch_from_dict({"audio": 3}, "<x>")


def test_a_bare_name_is_a_patch_name_even_beside_a_folder_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").mkdir()
    assert load_patch("default").source == str(PATCH_DIR / "default.toml")
    (tmp_path / "p.toml").mkdir()
    with pytest.raises(PatchError, match="is a directory"):
        load_patch("p.toml")


def test_redefining_a_built_in_preset_starts_from_it(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("[presets.organ]\nrelease = 1.0\n")
    organ = load_patch(path).presets["organ"]
    assert organ.release_seconds == 1.0
    assert organ.harmonics == BUILTIN_PRESETS["organ"].harmonics


def test_a_patch_in_another_encoding_is_one_clear_error(tmp_path):
    path = tmp_path / "p.toml"
    path.write_bytes("name = 'caf\u00e9'\n".encode("latin-1"))
    with pytest.raises(PatchError, match="cannot read the patch"):
        load_patch(path)
