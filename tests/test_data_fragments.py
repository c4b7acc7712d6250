"""Fragments data: channel-noise statistics against the requested rates, reproducibility, the by-file
train/val split, and bad inputs."""

from __future__ import annotations

import gzip
import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from trainers.data.fragments import (
    FragmentDataset,
    NoiseGenerator,
    default_corpus_paths,
    read_fragment,
    split_files,
)

ROOT = Path(__file__).resolve().parents[1]
OFF = {"bit_error_rate": 0.0, "substitution_rate": 0.0, "erasure_rate": 0.0}


def _nonzero_bytes(shape, seed=0) -> np.ndarray:
    # No zero bytes, so every erased byte shows up as a change.
    return np.random.default_rng(seed).integers(1, 256, size=shape, dtype=np.uint8)


def _runs(mask_row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) of the True runs of a 1-D bool array."""
    padded = np.concatenate([[False], mask_row, [False]]).astype(np.int8)
    d = np.diff(padded)
    starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    return starts, ends - starts


# ------------------------------------------------------------------------------------------ noise rates
def test_bit_error_rate_matches_request():
    clean = _nonzero_bytes((1000, 1000))
    noisy, changed = NoiseGenerator(**{**OFF, "bit_error_rate": 0.01}, seed=1)(clean)
    flipped_bits = np.unpackbits(noisy ^ clean).sum()
    assert flipped_bits / (clean.size * 8) == pytest.approx(0.01, rel=0.03)
    # Bits flip independently: a byte is changed with probability 1 - (1 - p)^8.
    assert changed.mean() == pytest.approx(1 - 0.99**8, rel=0.03)
    np.testing.assert_array_equal(changed, noisy != clean)


def test_substitution_rate_and_uniform_replacement():
    clean = _nonzero_bytes((1000, 1000))
    noisy, changed = NoiseGenerator(**{**OFF, "substitution_rate": 0.02}, seed=2)(clean)
    assert changed.mean() == pytest.approx(0.02, rel=0.03)
    # The new value is uniform over the 255 other values: (new - old) mod 256 is uniform on 1..255.
    delta = (noisy[changed].astype(int) - clean[changed].astype(int)) % 256
    assert delta.min() >= 1
    counts = np.bincount(delta, minlength=256)[1:]
    assert stats.chisquare(counts).pvalue > 1e-3


def test_erasure_run_starts_and_lengths():
    rate, (lo, hi) = 0.001, (4, 32)
    clean = _nonzero_bytes((10, 100_000))
    noisy, changed = NoiseGenerator(**{**OFF, "erasure_rate": rate, "erasure_length": (lo, hi)}, seed=3)(
        clean
    )
    np.testing.assert_array_equal(changed, noisy == 0)  # erasures only ever write zeros
    starts_all, lengths_all = [], []
    for row in changed:
        s, ln = _runs(row)
        keep = s + ln < row.size  # a run cut off at the row end is shorter than drawn
        starts_all.append(s[keep])
        lengths_all.append(ln[keep])
    lengths = np.concatenate(lengths_all)
    n_runs = len(lengths)
    # Runs that start inside another merge with it (probability ≈ rate · mean length ≈ 2 %).
    mean_len = (lo + hi) / 2
    expected_runs = clean.size * rate * (1 - rate * mean_len)
    assert n_runs == pytest.approx(expected_runs, rel=0.1)
    assert lengths.min() >= lo
    single = lengths[lengths <= hi]  # leave out the few merged runs
    assert len(single) > 0.95 * n_runs
    assert single.mean() == pytest.approx(mean_len, rel=0.05)
    counts = np.bincount(single - lo, minlength=hi - lo + 1)
    assert stats.chisquare(counts).pvalue > 1e-3


def test_burst_fraction_matches_stationary_probability():
    p_in, p_out = 0.01, 0.2
    clean = _nonzero_bytes((100, 10_000))
    gen = NoiseGenerator(**OFF, burst_p_enter=p_in, burst_p_exit=p_out, burst_bit_error_rate=1.0, seed=4)
    noisy, changed = gen(clean)
    # With BER 1 in the bad state every bit of a bad byte flips, so the changed bytes are the bad state.
    np.testing.assert_array_equal(noisy[changed], ~clean[changed])
    assert changed.mean() == pytest.approx(p_in / (p_in + p_out), rel=0.1)
    lengths = np.concatenate([_runs(row)[1] for row in changed])
    assert lengths.mean() == pytest.approx(1 / p_out, rel=0.1)  # geometric sojourn in the bad state


def test_burst_bit_error_rate_inside_bursts():
    clean = _nonzero_bytes((200, 5000))
    gen = NoiseGenerator(**OFF, burst_p_enter=0.05, burst_p_exit=0.05, burst_bit_error_rate=0.1, seed=5)
    noisy, _ = gen(clean)
    # Half the bytes are in the bad state on average, with BER 0.1 there and 0 elsewhere.
    assert np.unpackbits(noisy ^ clean).mean() == pytest.approx(0.5 * 0.1, rel=0.1)


def test_changed_mask_shape_and_input_untouched():
    clean = np.random.default_rng(0).integers(0, 256, size=(3, 4, 512), dtype=np.uint8)
    before = clean.copy()
    gen = NoiseGenerator(bit_error_rate=0.02, substitution_rate=0.05, erasure_rate=0.01, burst_p_enter=0.01)
    noisy, changed = gen(clean)
    assert noisy.shape == changed.shape == clean.shape
    assert noisy.dtype == np.uint8 and changed.dtype == bool
    np.testing.assert_array_equal(changed, noisy != clean)
    np.testing.assert_array_equal(clean, before)
    assert changed.any()


def test_noise_is_reproducible_from_the_seed():
    clean = _nonzero_bytes((8, 512))
    a1, m1 = NoiseGenerator(seed=7)(clean)
    a2, m2 = NoiseGenerator(seed=7)(clean)
    b, _ = NoiseGenerator(seed=8)(clean)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(m1, m2)
    assert not np.array_equal(a1, b)
    # The generator's own stream advances; an explicit rng gives the same result every time.
    gen = NoiseGenerator(seed=7)
    first, second = gen(clean)[0], gen(clean)[0]
    assert not np.array_equal(first, second)
    r1 = gen(clean, np.random.default_rng(123))[0]
    r2 = gen(clean, np.random.default_rng(123))[0]
    np.testing.assert_array_equal(r1, r2)


def test_noise_dict_round_trip_is_json_and_equivalent():
    gen = NoiseGenerator(0.001, 0.03, 0.004, (2, 9), 0.02, 0.3, 0.25, seed=11)
    d = json.loads(json.dumps(gen.to_dict()))
    clone = NoiseGenerator.from_dict(d)
    assert clone.to_dict() == gen.to_dict()
    clean = _nonzero_bytes((4, 512))
    np.testing.assert_array_equal(clone(clean)[0], gen(clean)[0])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"bit_error_rate": 1.5}, "bit_error_rate"),
        ({"substitution_rate": -0.1}, "substitution_rate"),
        ({"erasure_rate": float("nan")}, "erasure_rate"),
        ({"burst_bit_error_rate": "x"}, "burst_bit_error_rate"),
        ({"erasure_length": (8, 4)}, "erasure_length"),
        ({"erasure_length": (0, 4)}, "erasure_length"),
        ({"erasure_length": 5}, "erasure_length"),
        ({"burst_p_enter": 0.1, "burst_p_exit": 0.0}, "burst_p_exit"),
        ({"seed": -1}, "seed"),
    ],
)
def test_noise_rejects_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NoiseGenerator(**kwargs)


def test_noise_rejects_bad_data_and_dicts():
    gen = NoiseGenerator()
    with pytest.raises(ValueError, match="uint8"):
        gen(np.zeros(512, dtype=np.float32))
    with pytest.raises(ValueError, match="uint8"):
        gen([1, 2, 3])
    with pytest.raises(ValueError, match="unknown NoiseGenerator parameters"):
        NoiseGenerator.from_dict({"bit_error_rate": 0.1, "typo_rate": 0.2})


# ----------------------------------------------------------------------------------------------- files
def _make_corpus(folder: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        p = folder / f"text_{i}.txt"
        p.write_bytes((f"file {i} " * (150 + 60 * i)).encode())
        paths.append(p)
    for i in range(4):
        p = folder / "sub" / f"blob_{i}.bin"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(rng.integers(0, 256, 700 + 900 * i, dtype=np.uint8).tobytes())
        paths.append(p)
    return paths


def test_dataset_items_match_the_files(tmp_path):
    _make_corpus(tmp_path)
    ds = FragmentDataset(folder=tmp_path, max_fragments_per_file=3, seed=0)
    assert len(ds.files) == 10
    for i in range(len(ds)):
        corrupted, clean, changed = ds[i]
        assert corrupted.shape == clean.shape == (1, 512) and changed.shape == (512,)
        assert corrupted.dtype == clean.dtype == torch.float32 and changed.dtype == torch.bool
        path, offset = ds.fragment_source(i)
        raw = read_fragment(path, offset)
        np.testing.assert_array_equal(ds.fragment_bytes(i), raw)
        np.testing.assert_allclose(clean[0].numpy(), raw / 255.0, atol=1e-7)
        corrupted_bytes = np.rint(corrupted[0].numpy() * 255).astype(np.uint8)
        np.testing.assert_array_equal(changed.numpy(), corrupted_bytes != raw)
    # Fragments are aligned and at most max_fragments_per_file per file.
    origins = [ds.fragment_source(i) for i in range(len(ds))]
    assert all(off % 512 == 0 for _, off in origins)
    assert max(sum(1 for p, _ in origins if p == f) for f in ds.files) == 3


def test_dataset_corruption_is_deterministic_per_item(tmp_path):
    _make_corpus(tmp_path)
    a = FragmentDataset(folder=tmp_path, seed=5)
    b = FragmentDataset(folder=tmp_path, seed=5)
    c = FragmentDataset(folder=tmp_path, seed=6)
    idx = [3, 0, 7, 3]  # any access order
    for i in idx:
        torch.testing.assert_close(a[i][0], b[i][0], rtol=0, atol=0)
        torch.testing.assert_close(a[i][0], a[i][0], rtol=0, atol=0)
    assert any(not torch.equal(a[i][0], c[i][0]) for i in range(len(a)))
    before = a[2][0].clone()
    a.set_epoch(1)
    assert not torch.equal(a[2][0], before)


def test_split_holds_out_whole_files(tmp_path):
    paths = _make_corpus(tmp_path)
    (tmp_path / "tiny.txt").write_bytes(b"0123456789")
    with pytest.warns(UserWarning, match=r"tiny\.txt.*10 bytes"):
        train = FragmentDataset(folder=tmp_path, split="train", val_fraction=0.3, seed=0)
    with pytest.warns(UserWarning):
        val = FragmentDataset(folder=tmp_path, split="val", val_fraction=0.3, seed=1)
    with pytest.warns(UserWarning):
        everything = FragmentDataset(folder=tmp_path, split="all", seed=0)
    assert set(train.files).isdisjoint(val.files)
    assert set(train.files) | set(val.files) == set(everything.files) == set(paths)
    # Every fragment of the validation set comes from a held-out file; each file type is held out.
    assert {val.fragment_source(i)[0] for i in range(len(val))} <= set(val.files)
    assert {p.suffix for p in val.files} == {".txt", ".bin"}
    assert len(train) + len(val) == len(everything)


def test_split_is_stable_and_seed_independent():
    paths = [Path(f"/data/dir{i % 3}/file{i}.dat") for i in range(20)]
    train, val = split_files(paths, 0.25, Path("/data"))
    assert len(val) == 5 and sorted(train + val) == list(range(20))
    # The split is a property of the files, not of their order in the list.
    shuffled = paths[::-1]
    _, val_shuffled = split_files(shuffled, 0.25, Path("/data"))
    assert {shuffled[i] for i in val_shuffled} == {paths[i] for i in val}


def test_default_corpus_is_real_python_files():
    paths = default_corpus_paths(max_files=24)
    assert paths == default_corpus_paths(max_files=24)
    assert 4 <= len(paths) <= 24
    suffixes = {p.suffix for p in paths}
    assert {".py", ".pyc"} <= suffixes
    assert suffixes & {".so", ".pyd", ".whl"}
    assert all(p.is_file() and p.stat().st_size >= 512 for p in paths)
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    assert all(stdlib in p.resolve().parents for p in paths)
    # Interleaved kinds: a prefix of the list still mixes types.
    assert len({p.suffix for p in paths[:4]}) >= 3
    ds = FragmentDataset(paths=paths, max_fragments_per_file=2, split="val")
    assert len(ds) >= 2 and ds.preprocessing()["kind"] == "bytes-over-255"


_CORPUS_KINDS = """
import collections, json, sys
from trainers.data.fragments import default_corpus_paths, file_type
kinds = collections.Counter(file_type(p) for p in default_corpus_paths(max_files=64))
print(json.dumps({"venv": sys.prefix != sys.base_prefix, "kinds": dict(kinds)}))
"""


def test_the_python_corpus_is_the_same_kinds_of_files_inside_a_virtual_environment(tmp_path):
    """Replays the venv report: inside a venv the built-in corpus had no shared libraries (its lib-dynload
    was looked for in the venv), so a venv user trained on other data than a system install."""
    import collections
    import os
    import subprocess
    import sys
    import venv

    from trainers.data.fragments import file_type

    venv.EnvBuilder(with_pip=False, symlinks=True).create(tmp_path / "venv")
    # The fresh venv sees this interpreter's packages (numpy, torch) and the checkout through PYTHONPATH
    # only, so the test also holds when pytest itself runs in a venv.
    packages = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    proc = subprocess.run(
        [str(tmp_path / "venv" / "bin" / "python"), "-c", _CORPUS_KINDS],
        cwd=tmp_path,
        env={"PATH": os.defpath, "PYTHONPATH": os.pathsep.join([str(ROOT), *packages])},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    inside = json.loads(proc.stdout.splitlines()[-1])
    here = collections.Counter(file_type(p) for p in default_corpus_paths(max_files=64))
    assert inside["venv"]
    assert inside["kinds"].get("elf", 0) >= 8
    assert inside["kinds"] == dict(here)


def test_preprocessing_is_json_and_rebuilds_the_noise(tmp_path):
    _make_corpus(tmp_path)
    noise = NoiseGenerator(bit_error_rate=0.02, seed=9)
    ds = FragmentDataset(folder=tmp_path, noise=noise, seed=3)
    prep = json.loads(json.dumps(ds.preprocessing()))
    assert prep["fragment_size"] == 512 and prep["seed"] == 3
    rebuilt = FragmentDataset(
        folder=tmp_path, noise=NoiseGenerator.from_dict(prep["noise"]), seed=prep["seed"]
    )
    torch.testing.assert_close(rebuilt[4][0], ds[4][0], rtol=0, atol=0)


def test_dataset_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="folder not found: .*missing"):
        FragmentDataset(folder=tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"no usable file in folder .*empty.*512 bytes"):
        FragmentDataset(folder=empty)
    (empty / "small.bin").write_bytes(b"x" * 100)
    with pytest.warns(UserWarning, match="small.bin"), pytest.raises(ValueError, match="no usable file"):
        FragmentDataset(folder=empty)
    with pytest.raises(ValueError, match="either paths or folder"):
        FragmentDataset(paths=[], folder=empty)
    with pytest.raises(ValueError, match="split"):
        FragmentDataset(folder=empty, split="test")
    with pytest.raises(ValueError, match="val_fraction"):
        FragmentDataset(folder=empty, val_fraction=1.0)
    with pytest.warns(UserWarning, match="nowhere.bin"), pytest.raises(ValueError, match="no usable file"):
        FragmentDataset(paths=[tmp_path / "nowhere.bin"])
    one = tmp_path / "one"
    one.mkdir()
    (one / "a.bin").write_bytes(b"a" * 2048)
    with pytest.raises(ValueError, match="val split .* is empty"):
        FragmentDataset(folder=one, split="val")


# ----------------------------------------------------------------------------------------- read_fragment
def test_read_fragment(tmp_path):
    data = np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8)
    p = tmp_path / "f.bin"
    p.write_bytes(data.tobytes())
    np.testing.assert_array_equal(read_fragment(p), data[:512])
    np.testing.assert_array_equal(read_fragment(p, offset=1000), data[1000:1512])
    np.testing.assert_array_equal(read_fragment(p, offset=0, fragment_size=64), data[:64])
    short = tmp_path / "short.bin"
    short.write_bytes(b"0123456789")
    with pytest.raises(ValueError, match="is 10 bytes; a fragment needs 512"):
        read_fragment(short)
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="is empty"):
        read_fragment(empty)
    with pytest.raises(FileNotFoundError, match="file not found"):
        read_fragment(tmp_path / "absent.bin")
    with pytest.raises(ValueError, match="runs past the end"):
        read_fragment(p, offset=1600)
    with pytest.raises(ValueError, match="offset"):
        read_fragment(p, offset=-1)
    with pytest.raises(ValueError, match="not a regular file"):
        read_fragment(tmp_path)


# -------------------------------------------------------------------------------------------------- assets
def test_example_fragment_assets_are_reproducible(tmp_path, asset_maker):
    made = asset_maker.make_fragments(tmp_path)
    shipped = ROOT / "assets" / "fragments"
    assert (tmp_path / "sample.txt").read_bytes() == (shipped / "sample.txt").read_bytes()
    assert gzip.decompress((tmp_path / "sample.txt.gz").read_bytes()) == gzip.decompress(
        (shipped / "sample.txt.gz").read_bytes()
    )
    for p in made:
        assert 512 <= p.stat().st_size <= 300_000
        assert read_fragment(shipped / p.name).shape == (512,)


# ------------------------------------------------------------------------------------ provenance and types
def test_file_type_reads_the_content_not_the_name(tmp_path):
    import py_compile
    import zipfile

    from trainers.data.fragments import file_type

    rng = np.random.default_rng(0)
    text = "café: naïve ünïcode text\n" * 200
    cases = {
        # The extensions lie on purpose: only the bytes decide.
        "a.bin": text.encode("utf-8"),
        "b.txt": gzip.compress(text.encode()),
        "c.py": b"\x7fELF\x02\x01\x01" + bytes(600),
        "d.so": b"\xca\xfe\xba\xbe" + bytes(600),  # a Java class file
        "e.txt": rng.integers(0, 256, 4000, np.uint8).tobytes(),
        "f.md": b"text with\x00a NUL byte " * 40,
        # A multi-byte character cut by the 64 KiB sample is still text.
        "g": ("a" * 65535 + "é" * 10).encode("utf-8"),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    with zipfile.ZipFile(tmp_path / "h.txt", "w") as zf:
        zf.writestr("x", text)
    (tmp_path / "mod.py").write_text("x = 1\n" * 200)
    py_compile.compile(str(tmp_path / "mod.py"), cfile=str(tmp_path / "i.dat"))
    expected = {
        "a.bin": "text",
        "b.txt": "compressed",
        "c.py": "elf",
        "d.so": "bytecode",
        "e.txt": "other",
        "f.md": "other",
        "g": "text",
        "h.txt": "compressed",
        "i.dat": "bytecode",
    }
    assert {name: file_type(tmp_path / name) for name in expected} == expected
    assert file_type(tmp_path / "missing") == "other"


def test_the_python_corpus_holds_each_kind_and_fragments_know_their_file(tmp_path):
    from trainers.data.fragments import file_type

    paths = default_corpus_paths(max_files=8)
    kinds = {p.suffix: file_type(p) for p in paths}
    assert kinds.get(".py") == "text" and kinds.get(".pyc") == "bytecode" and kinds.get(".so") == "elf"
    ds = FragmentDataset(paths=paths[:4], noise=NoiseGenerator(seed=0))
    for i in (0, len(ds) // 2, len(ds) - 1):
        path, offset = ds.fragment_info(i)
        assert offset % 512 == 0
        np.testing.assert_array_equal(ds.fragment_bytes(i), read_fragment(path, offset))
        assert ds.fragment_type(i) == file_type(path)
