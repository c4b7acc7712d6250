"""The --data spec: parsing, typed values, canonical formatting and every error path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from trainers.data.spec import (
    DOMAINS,
    KEYS,
    OPTIONS,
    SOURCES,
    DataSpec,
    default_data_spec,
    format_data_spec,
    parse_data_spec,
)


@pytest.mark.parametrize(
    ("text", "domain", "source", "options"),
    [
        ("sar", "sar", "synthetic", {}),
        ("sar:folder=/data/s1", "sar", "folder", {"folder": "/data/s1"}),
        ("sar:synthetic,looks=1", "sar", "synthetic", {"looks": 1.0}),
        ("audio:folder=/x", "audio", "folder", {"folder": "/x"}),
        ("audio:synthetic,n=200", "audio", "synthetic", {"n": 200}),
        ("fragments:folder=/x", "fragments", "folder", {"folder": "/x"}),
        ("fragments:python", "fragments", "python", {}),
        ("audio:n=50", "audio", "synthetic", {"n": 50}),  # no source, no folder: the default source
        ("SAR : Folder , FOLDER=/Data/S1", "sar", "folder", {"folder": "/Data/S1"}),  # values keep case
        (
            "sar:folder=/d,kind=Amplitude,size=64,val=0.2,seed=7,n=10",
            "sar",
            "folder",
            {
                "folder": "/d",
                "kind": "amplitude",
                "size": 64,
                "val": 0.2,
                "seed": 7,
                "n": 10,
            },
        ),
        (
            "fragments:python,max_files=40,ber=0.01,sub=0.005,erasure=0.1,burst=0,val=300",
            "fragments",
            "python",
            {"max_files": 40, "ber": 0.01, "sub": 0.005, "erasure": 0.1, "burst": 0.0, "val": 300},
        ),
    ],
)
def test_parse_examples(text: str, domain: str, source: str, options: dict) -> None:
    spec = parse_data_spec(text)
    assert (spec.domain, spec.source, spec.options) == (domain, source, options)
    # Exact types matter: the data module gets ints where it indexes and floats where it samples.
    for key, value in options.items():
        assert type(spec.options[key]) is type(value), key


def test_typed_values() -> None:
    spec = parse_data_spec("fragments:folder=/f,max_files=3,ber=1e-3,val=0.25")
    assert spec.options["max_files"] == 3 and isinstance(spec.options["max_files"], int)
    assert spec.options["ber"] == pytest.approx(0.001)
    assert isinstance(spec.options["val"], float)
    # val: a whole number is a count, a number in (0, 1) a fraction
    assert parse_data_spec("sar:val=200").options["val"] == 200
    assert isinstance(parse_data_spec("sar:val=200").options["val"], int)


def test_dataspec_built_from_python_values_is_validated_and_converted() -> None:
    # The studio builds specs from widgets, which hand over floats for integer fields.
    spec = DataSpec("SAR", None, {"looks": 2, "n": 100.0, "val": 0.1})
    assert spec == DataSpec("sar", "synthetic", {"n": 100, "looks": 2.0, "val": 0.1})
    assert isinstance(spec.options["n"], int) and isinstance(spec.options["looks"], float)
    assert DataSpec("audio", options={"folder": Path("/clips")}).source == "folder"
    assert DataSpec("audio", options={"folder": Path("/clips")}).options["folder"] == "/clips"
    with pytest.raises(ValueError, match=r"'n'.*expected an integer >= 1"):
        DataSpec("sar", options={"n": 2.5})


def _all_keys_spec(domain: str, source: str) -> DataSpec:
    """A spec using every allowed key of a domain/source with a valid, non-default value."""
    values = {
        "folder": "/data/x y",
        "n": 12,
        "size": 128,
        "looks": 4.4,
        "scene": "single-look",
        "kind": "intensity",
        "band": 1,
        "max_files": 9,
        "ber": 0.001,
        "sub": 0.25,
        "erasure": 0.5,
        "burst": 1e-05,
        "hop": 0.25,
        "seed": 0,
        "val": 0.15,
    }
    return DataSpec(domain, source, {key: values[key] for key in KEYS[(domain, source)]})


@pytest.mark.parametrize(("domain", "source"), sorted(KEYS))
def test_format_parse_round_trip_every_source(domain: str, source: str) -> None:
    full = _all_keys_spec(domain, source)
    text = format_data_spec(full)
    assert parse_data_spec(text) == full
    assert format_data_spec(parse_data_spec(text)) == text  # canonical: formatting is a fixed point
    bare = DataSpec(domain, source, {"folder": "/d"} if source == "folder" else {})
    assert parse_data_spec(format_data_spec(bare)) == bare
    assert str(full) == text


def test_format_is_canonical() -> None:
    assert format_data_spec(parse_data_spec("sar")) == "sar:synthetic"
    assert format_data_spec(parse_data_spec("fragments:python")) == "fragments:python"
    # Keys come out in table order whatever order they went in, and folder= implies the source.
    assert (
        format_data_spec(parse_data_spec("sar:val=0.1,kind=auto,folder=/s"))
        == "sar:folder=/s,kind=auto,val=0.1"
    )
    assert format_data_spec(parse_data_spec("sar:looks=1")) == "sar:synthetic,looks=1"


@pytest.mark.parametrize(
    "folder",
    ["/data/a,b", "C:\\data\\sar", " leading and trailing ", 'say "hi"', 'back\\"slash', "/a=b", "/ünï cödé"],
)
def test_awkward_folder_values_round_trip(folder: str) -> None:
    spec = DataSpec("fragments", "folder", {"folder": folder, "ber": 0.1})
    text = format_data_spec(spec)
    assert parse_data_spec(text) == spec
    assert parse_data_spec(text).options["folder"] == folder


def test_quoted_values_parse() -> None:
    spec = parse_data_spec('audio:folder = "/x,y \\"z\\"" , n=3')
    assert spec.options == {"folder": '/x,y "z"', "n": 3}
    # Outside quotes a backslash is an ordinary character (Windows paths need no escaping).
    assert parse_data_spec("sar:folder=D:\\s1\\grd").options["folder"] == "D:\\s1\\grd"


def test_defaults() -> None:
    for domain in DOMAINS:
        spec = default_data_spec(domain)
        assert spec == parse_data_spec(domain)
        assert spec.source == SOURCES[domain][0] and spec.options == {}
    assert default_data_spec("fragments").source == "python"
    with pytest.raises(ValueError, match="expected one of sar, audio, fragments"):
        default_data_spec("video")


def test_table_is_consistent() -> None:
    assert set(SOURCES) == set(DOMAINS)
    assert set(KEYS) == {(d, s) for d in DOMAINS for s in SOURCES[d]}
    for (_, source), keys in KEYS.items():
        assert set(keys) <= set(OPTIONS)
        assert {"seed", "val"} <= set(keys)
        assert ("folder" in keys) == (source == "folder")
    import trainers.data.spec as module

    for (domain, source), keys in KEYS.items():  # the documented table matches the enforced one
        row = re.search(rf"^\| {domain} \| {source}( \(default\))? \| (.+) \|$", module.__doc__ or "", re.M)
        assert row is not None, (domain, source)
        assert tuple(k.strip() for k in row.group(2).split(",")) == keys


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "",
            r"empty data spec; expected DOMAIN\[:SOURCE\]\[,KEY=VALUE\.\.\.\] with DOMAIN one of sar, audio",
        ),
        ("   ", "empty data spec"),
        ("video", r"unknown data domain 'video'.*expected one of sar, audio, fragments"),
        ("/data/s1", "unknown data domain '/data/s1'"),
        ("sar:", "nothing after ':'"),
        ("sar:,n=1", "empty item"),
        ("sar:n=1,", "empty item"),
        ("sar:n=1,,seed=2", "empty item"),
        ("sar:bogus", r"unknown source 'bogus' for data domain 'sar'; expected one of synthetic, folder"),
        ("fragments:synthetic", "expected one of python, folder"),
        ("sar:synthetic,python", r"expected KEY=VALUE.*got 'python'"),
        ("sar:=3", "missing key before '='"),
        ("sar:n=", "missing value for key 'n'"),
        ("sar:n=1,n=2", "data key 'n' is given twice"),
        ("sar:N=1,n=2", "data key 'n' is given twice"),
        ("sar:folder", r"sar:folder needs folder=PATH"),
        ("sar:folder,size=64", r"needs folder=PATH"),
        ("sar:folder=", "missing value for key 'folder'"),
        ('sar:folder=""', r"invalid value '' for data key 'folder'.*expected a folder path"),
        (
            "sar:synthetic,folder=/x",
            r"unknown key 'folder' for data sar:synthetic.*allowed keys: size, scene, looks",
        ),
        (
            "sar:kind=auto",
            r"'kind' belongs to source folder\); allowed keys: size, scene, looks, n, seed, val",
        ),
        ("audio:looks=2", r"unknown key 'looks' for data audio:synthetic; allowed keys: n, seed, val"),
        ("fragments:python,size=64", r"allowed keys: max_files, ber, sub, erasure, burst, n, seed, val"),
        ("sar:n=0", r"invalid value '0' for data key 'n' \(sar:synthetic\); expected an integer >= 1"),
        ("sar:n=ten", "expected an integer >= 1"),
        ("sar:n=2.5", "expected an integer >= 1"),
        ("sar:seed=-1", "expected an integer >= 0"),
        ("sar:size=100", "expected an integer >= 32 and a multiple of 16"),
        ("sar:size=16", "expected an integer >= 32 and a multiple of 16"),
        ("sar:looks=0.5", "expected a number >= 1"),
        ("sar:looks=inf", "expected a number >= 1"),
        ("sar:folder=/x,kind=raw", "expected auto or intensity or amplitude"),
        ("sar:val=0", r"expected a fraction in \(0, 1\) or a count >= 1"),
        ("sar:val=1.5", "expected a fraction in"),
        ("sar:val=-0.1", "expected a fraction in"),
        ("fragments:ber=1.5", r"expected a number in \[0, 1\]"),
        ("fragments:sub=-0.1", r"expected a number in \[0, 1\]"),
        ("fragments:erasure=nan", r"expected a number in \[0, 1\]"),
        ('sar:folder="/x', "unterminated double quote"),
        ('sar:folder="/x"y', "unexpected text after a closing quote"),
        ('sar:fol"der=1', "misplaced double quote"),
        ('sar:folder=/a"b', "misplaced double quote"),
    ],
)
def test_errors_name_what_was_expected(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_data_spec(text)


def test_non_string_inputs() -> None:
    with pytest.raises(ValueError, match="empty data spec"):
        parse_data_spec(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expected a DataSpec"):
        format_data_spec("sar")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="data options must be a dict"):
        DataSpec("sar", None, [("n", 1)])  # type: ignore[arg-type]


def test_check_paths(tmp_path: Path) -> None:
    parse_data_spec("sar:synthetic").check_paths()  # nothing to check
    parse_data_spec(f"sar:folder={tmp_path}").check_paths()
    missing = parse_data_spec(f"sar:folder={tmp_path / 'nope'}")  # parsing alone never touches the disk
    with pytest.raises(FileNotFoundError, match="does not exist"):
        missing.check_paths()
    a_file = tmp_path / "f.bin"
    a_file.write_bytes(b"x")
    with pytest.raises(ValueError, match="is not a folder"):
        parse_data_spec(f"fragments:folder={a_file}").check_paths()
    assert parse_data_spec("audio:folder=~/clips").folder_path == Path.home() / "clips"
