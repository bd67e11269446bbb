"""Bundles: which files go in, the same directory gives the same digest and bytes, untrusted
archives are refused without writing outside the destination, the agent's cache stays under its
cap, and venvs are made once per requirements file."""

from __future__ import annotations

import gzip
import io
import os
import stat
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

from dtf_agent.runners import bundles
from dtf_agent.runners.bundles import (
    DEFAULT_EXCLUDES,
    DIGEST_RE,
    BundleCache,
    BundleError,
    build_bundle,
    digest_of,
    list_files,
)


def write(root: Path, files: dict[str, str | bytes]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.encode()
        path.write_bytes(content)
    return root


def suite(tmp_path: Path, files: dict[str, str | bytes] | None = None, name: str = "suite") -> Path:
    return write(tmp_path / name, files if files is not None else {"test_a.py": "def test(): pass\n"})


def archive(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    """A .tar.gz made by hand: what a hostile sender could put on the wire."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for info, content in members:
            info.size = len(content) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(content) if info.isreg() else None)
    return buf.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o644
    return info


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# Determinism and the digest
# ---------------------------------------------------------------------------------------------


def test_same_directory_gives_same_digest_and_identical_bytes(tmp_path):
    root = suite(tmp_path, {"test_a.py": "x = 1\n", "pkg/conf.yaml": "a: 1\n", "pkg/data.bin": os.urandom(5000)})
    first = build_bundle(root)
    os.utime(root / "test_a.py", (12345, 12345))  # times are not part of a bundle
    second = build_bundle(root)
    assert DIGEST_RE.match(first.digest)
    assert second.digest == first.digest
    assert second.data == first.data
    assert first.files == ("pkg/conf.yaml", "pkg/data.bin", "test_a.py")
    assert first.size == 6 + 5 + 5000
    assert first.data[4:8] == b"\0\0\0\0", "gzip header time is zero"
    assert "data=" not in repr(first), "the archive bytes stay out of the repr"


def test_one_byte_or_one_mode_bit_changes_the_digest(tmp_path):
    root = suite(tmp_path, {"test_a.py": "x = 1\n", "run.sh": "echo\n"})
    base = build_bundle(root).digest
    (root / "test_a.py").write_text("x = 2\n")
    changed = build_bundle(root).digest
    assert changed != base
    (root / "run.sh").chmod(0o755)
    executable = build_bundle(root).digest
    assert executable not in (base, changed)
    (root / "run.sh").chmod(0o700)  # any x bit is 0o755; the other bits are not shipped
    assert build_bundle(root).digest == executable


def test_a_renamed_file_changes_the_digest(tmp_path):
    a = build_bundle(suite(tmp_path, {"a.py": "same"}, name="one")).digest
    b = build_bundle(suite(tmp_path, {"b.py": "same"}, name="two")).digest
    assert a != b


def test_digest_of_recomputes_the_manifest_digest(tmp_path):
    bundle = build_bundle(suite(tmp_path, {"a.py": "1", "sub/b.py": "2", "é/ünïcode.txt": "3",
                                           "d" * 120 + "/long_name_" + "x" * 150 + ".py": "4"}))
    assert digest_of(bundle.data) == bundle.digest
    with pytest.raises(BundleError, match="not a valid bundle archive"):
        digest_of(b"not a gzip file at all")
    with pytest.raises(BundleError, match="not a valid bundle archive"):
        digest_of(bundle.data[: len(bundle.data) // 2])


# ---------------------------------------------------------------------------------------------
# Which files go in
# ---------------------------------------------------------------------------------------------


def test_gitignore_negation_anchoring_dir_only_and_comments(tmp_path):
    root = suite(tmp_path, {
        ".gitignore": "\n".join([
            "# a comment, and a blank line next",
            "",
            "*.log",
            "!keep.log",
            "/build",         # anchored: only the top-level one
            "cache/",         # directories only, at any depth
            "docs/*.tmp",     # a middle slash anchors too
            "data?.csv",
            "[abc].txt",
            r"\#literal",
            "trailing.txt   ",
        ]) + "\n",
        "a.log": "", "keep.log": "", "sub/b.log": "",
        "build/out.o": "", "sub/build/kept.py": "",
        "cache/x": "", "sub/cache/y": "", "notdir/cache": "a file named cache stays",
        "docs/a.tmp": "", "docs/deeper/b.tmp": "",
        "data1.csv": "", "data10.csv": "",
        "a.txt": "", "d.txt": "",
        "#literal": "",
        "trailing.txt": "",
    })
    assert list_files(root) == [
        ".gitignore", "d.txt", "data10.csv", "docs/deeper/b.tmp", "keep.log", "notdir/cache", "sub/build/kept.py",
    ]


def test_double_star_forms(tmp_path):
    root = suite(tmp_path, {
        ".dtfignore": "**/gen\nlogs/**\n!logs/keep.txt\na/**/z.txt\n",
        "gen/1": "", "x/y/gen/2": "",
        "logs/old.txt": "", "logs/keep.txt": "", "logs/deep/old.txt": "",
        "a/z.txt": "", "a/b/z.txt": "", "a/b/c/z.txt": "", "a/b/c/other.txt": "",
    })
    assert list_files(root) == [".dtfignore", "a/b/c/other.txt", "logs/keep.txt"]


def test_nested_gitignore_applies_to_its_own_subtree_and_overrides_the_parent(tmp_path):
    root = suite(tmp_path, {
        ".gitignore": "*.dat\n",
        "one/.gitignore": "/local.txt\n!important.dat\n",
        "one/local.txt": "", "one/deep/local.txt": "", "one/important.dat": "", "one/other.dat": "",
        "two/local.txt": "", "two/important.dat": "",
    })
    assert list_files(root) == [
        ".gitignore", "one/.gitignore", "one/deep/local.txt", "one/important.dat", "two/local.txt",
    ]


def test_an_excluded_directory_cannot_have_files_brought_back(tmp_path):
    # git's rule: a directory that is excluded is not looked into, so "!" below it does nothing.
    root = suite(tmp_path, {".gitignore": "out/\n!out/keep.txt\n", "out/keep.txt": "", "a.py": ""})
    assert list_files(root) == [".gitignore", "a.py"]


def test_default_excludes_always_apply(tmp_path):
    root = suite(tmp_path, {
        ".gitignore": "!.venv/\n!*.pyc\n",  # cannot bring them back
        "test_a.py": "",
        ".venv/lib/x.py": "", "venv/bin/python": "", ".git/HEAD": "", "sub/.git/config": "",
        "__pycache__/a.cpython-311.pyc": "", "pkg/mod.pyc": "", "pkg/dtf.egg-info/PKG-INFO": "",
        "node_modules/a.js": "", ".pytest_cache/v": "", ".dtf/state": "",
    })
    assert list_files(root) == [".gitignore", "test_a.py"]
    assert ".venv/" in DEFAULT_EXCLUDES and "__pycache__/" in DEFAULT_EXCLUDES


def test_caller_excludes_win_over_the_ignore_files(tmp_path):
    root = suite(tmp_path, {".gitignore": "!data/\n", "data/big.bin": "", "keep/a.txt": "", "test_a.py": ""})
    assert list_files(root, excludes=["data/", "keep/*.txt"]) == [".gitignore", "test_a.py"]
    assert build_bundle(root, excludes=["data/"]).files == (".gitignore", "keep/a.txt", "test_a.py")


def test_an_invalid_pattern_is_ignored(tmp_path):
    root = suite(tmp_path, {".gitignore": "[z-a]\n*.log\n", "a.log": "", "z": ""})
    assert list_files(root) == [".gitignore", "z"]


def test_symlinks_inside_are_stored_as_files_outside_and_directories_skipped(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    root = suite(tmp_path, {"real.txt": "content", "dir/x.py": "", "run.sh": "#!/bin/sh\n"})
    (root / "run.sh").chmod(0o755)
    (root / "link.txt").symlink_to("real.txt")
    (root / "link.sh").symlink_to("run.sh")
    (root / "out.txt").symlink_to(outside)
    (root / "dirlink").symlink_to("dir", target_is_directory=True)
    (root / "loop").symlink_to(".", target_is_directory=True)
    (root / "dangling").symlink_to("nowhere")
    bundle = build_bundle(root)
    assert bundle.files == ("dir/x.py", "link.sh", "link.txt", "real.txt", "run.sh")
    notes = "\n".join(bundle.skipped)
    assert "out.txt: symlink to" in notes and "outside the bundle root" in notes
    assert "dirlink: symlink to a directory" in notes and "loop: symlink to a directory" in notes
    assert "dangling: symlink to nothing" in notes
    cache = BundleCache(tmp_path / "cache")
    cache.put(bundle.digest, bundle.data)
    dest = cache.unpack(bundle.digest, tmp_path / "work")
    assert (dest / "link.txt").read_text() == "content" and not (dest / "link.txt").is_symlink()
    assert stat.S_IMODE((dest / "link.sh").stat().st_mode) == 0o755


def test_fifos_are_skipped_with_a_note(tmp_path):
    root = suite(tmp_path)
    os.mkfifo(root / "pipe")
    bundle = build_bundle(root)
    assert bundle.files == ("test_a.py",)
    assert any(n.startswith("pipe: not a regular file") for n in bundle.skipped)


# ---------------------------------------------------------------------------------------------
# Refusals with a clear message
# ---------------------------------------------------------------------------------------------


def test_size_cap_names_the_largest_files_and_suggests_dtfignore(tmp_path):
    files: dict[str, str | bytes] = {f"f{i}.bin": b"x" * (1000 * (i + 1)) for i in range(7)}
    root = suite(tmp_path, files)
    with pytest.raises(BundleError) as err:
        build_bundle(root, max_bytes=10_000)
    msg = str(err.value)
    assert "over the limit of 9.8 KiB" in msg and ".dtfignore" in msg
    for name in ("f6.bin (6.8 KiB)", "f5.bin", "f4.bin", "f3.bin", "f2.bin"):
        assert name in msg
    assert "f1.bin" not in msg and "f0.bin" not in msg, "only the largest five"


def test_missing_root_file_root_and_empty_bundle_are_refused_naming_the_path(tmp_path):
    with pytest.raises(BundleError, match=r"nope: no such directory"):
        build_bundle(tmp_path / "nope")
    (tmp_path / "file").write_text("")
    with pytest.raises(BundleError, match=r"file: not a directory"):
        list_files(tmp_path / "file")
    empty = suite(tmp_path, {".venv/x": "", "__pycache__/y.pyc": ""}, name="empty")
    with pytest.raises(BundleError, match=r"empty: nothing to bundle"):
        build_bundle(empty)


# ---------------------------------------------------------------------------------------------
# Untrusted archives
# ---------------------------------------------------------------------------------------------

HOSTILE = {
    "dot-dot": [(member("../evil"), b"owned")],
    "dot-dot-deeper": [(member("ok/../../evil"), b"owned")],
    "absolute": [(member("/tmp/dtf-evil-absolute"), b"owned")],
    "symlink": [(member("link", tarfile.SYMTYPE, "/etc/passwd"), b"")],
    "symlink-then-file": [(member("link", tarfile.SYMTYPE, ".."), b""), (member("link/evil"), b"owned")],
    "hard link": [(member("hard", tarfile.LNKTYPE, "/etc/passwd"), b"")],
    "device": [(member("dev", tarfile.CHRTYPE), b"")],
    "directory": [(member("dir", tarfile.DIRTYPE), b"")],
    "duplicate": [(member("a"), b"1"), (member("a"), b"2")],
    "file and directory": [(member("a"), b"1"), (member("a/b"), b"2")],
    "dot": [(member("./a"), b"1")],
    "empty": [],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archives_are_refused_by_digest_of_and_unpack_without_writing_outside(tmp_path, case):
    data = archive(HOSTILE[case])
    with pytest.raises(BundleError, match="refused"):
        digest_of(data)
    cache = BundleCache(tmp_path / "cache")
    digest = "sha256-" + "0" * 64
    with pytest.raises(BundleError, match="refused"):
        cache.put(digest, data)
    assert not cache.has(digest)
    # As if the cached file were replaced on disk: unpack checks every member itself.
    (tmp_path / "cache" / "bundles" / f"{digest}.tar.gz").write_bytes(data)
    dest = tmp_path / "jail" / "work"
    with pytest.raises(BundleError, match="refused"):
        cache.unpack(digest, dest)
    assert not (tmp_path / "jail" / "evil").exists() and not (tmp_path / "evil").exists()
    assert not Path("/tmp/dtf-evil-absolute").exists()
    assert not any(p.is_symlink() for p in dest.rglob("*"))


def test_a_header_too_large_to_be_honest_is_refused(tmp_path):
    info = member("a")
    info.pax_headers = {"comment": "x" * 200_000}
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb") as gz, tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info.size = 1
        tar.addfile(info, io.BytesIO(b"1"))
    with pytest.raises(BundleError, match="refused: a header of"):
        digest_of(buf.getvalue())


def test_an_archive_expanding_past_the_limit_is_refused(tmp_path):
    data = archive([(member("zeros"), b"\0" * 100_000)])
    assert digest_of(data, max_bytes=100_000)
    with pytest.raises(BundleError, match="its files hold more than"):
        digest_of(data, max_bytes=99_999)


def test_unpack_does_not_follow_a_symlink_already_in_dest(tmp_path):
    bundle = build_bundle(suite(tmp_path, {"sub/x.txt": "mine", "y.txt": "mine"}))
    cache = BundleCache(tmp_path / "cache")
    cache.put(bundle.digest, bundle.data)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "y.txt").write_text("theirs")
    dest = tmp_path / "work"
    dest.mkdir()
    (dest / "sub").symlink_to(outside, target_is_directory=True)
    with pytest.raises(BundleError, match="sub"):
        cache.unpack(bundle.digest, dest)
    assert list(outside.iterdir()) == [outside / "y.txt"]
    # A file symlink in dest is replaced, not written through.
    dest2 = tmp_path / "work2"
    dest2.mkdir()
    (dest2 / "y.txt").symlink_to(outside / "y.txt")
    (tmp_path / "suite" / "sub" / "x.txt").unlink()
    only_y = build_bundle(tmp_path / "suite")
    cache.put(only_y.digest, only_y.data)
    cache.unpack(only_y.digest, dest2)
    assert (outside / "y.txt").read_text() == "theirs"
    assert (dest2 / "y.txt").read_text() == "mine" and not (dest2 / "y.txt").is_symlink()


# ---------------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------------


def test_put_unpack_round_trip_restores_content_and_modes(tmp_path):
    root = suite(tmp_path, {"test_a.py": "x", "bin/run.sh": "#!/bin/sh\n", "é.txt": "unicode"})
    (root / "bin/run.sh").chmod(0o775)
    (root / "test_a.py").chmod(0o600)
    bundle = build_bundle(root)
    cache = BundleCache(tmp_path / "cache")
    assert not cache.has(bundle.digest)
    path = cache.put(bundle.digest, bundle.data)
    assert path == tmp_path / "cache" / "bundles" / f"{bundle.digest}.tar.gz"
    assert cache.has(bundle.digest) and cache.total_bytes() == len(bundle.data)
    dest = cache.unpack(bundle.digest, tmp_path / "work" / "task-1")
    assert dest == tmp_path / "work" / "task-1"
    assert tree(dest) == {"bin/run.sh": b"#!/bin/sh\n", "test_a.py": b"x", "é.txt": b"unicode"}
    assert stat.S_IMODE((dest / "bin/run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "test_a.py").stat().st_mode) == 0o644
    cache.unpack(bundle.digest, dest)  # again over itself: files are replaced
    assert tree(dest)["test_a.py"] == b"x"


def test_put_refuses_data_that_is_not_the_digest_named(tmp_path):
    one = build_bundle(suite(tmp_path, {"a": "1"}, name="one"))
    two = build_bundle(suite(tmp_path, {"a": "2"}, name="two"))
    cache = BundleCache(tmp_path / "cache")
    with pytest.raises(BundleError, match=f"bundle {one.digest}: the data received is bundle {two.digest}"):
        cache.put(one.digest, two.data)
    assert not cache.has(one.digest) and cache.total_bytes() == 0
    assert list((tmp_path / "cache" / "bundles").iterdir()) == []


@pytest.mark.parametrize("bad", ["sha256-" + "A" * 64, "sha256-" + "0" * 63, "../../etc/passwd",
                                 "sha256-" + "0" * 64 + "\n", "md5-" + "0" * 32])
def test_malformed_digests_are_refused_before_touching_the_disk(tmp_path, bad):
    cache = BundleCache(tmp_path / "cache")
    for call in (lambda: cache.has(bad), lambda: cache.put(bad, b""), lambda: cache.unpack(bad, tmp_path / "w")):
        with pytest.raises(BundleError, match="not a bundle digest"):
            call()


def test_unpack_of_a_missing_bundle_says_fetch_it(tmp_path):
    with pytest.raises(BundleError, match="is not in the cache"):
        BundleCache(tmp_path / "cache").unpack("sha256-" + "1" * 64, tmp_path / "w")


def test_a_damaged_cached_file_is_dropped_on_unpack(tmp_path):
    one = build_bundle(suite(tmp_path, {"a": "1"}, name="one"))
    two = build_bundle(suite(tmp_path, {"a": "2"}, name="two"))
    cache = BundleCache(tmp_path / "cache")
    path = cache.put(one.digest, one.data)
    path.write_bytes(two.data)
    with pytest.raises(BundleError, match="damaged"):
        cache.unpack(one.digest, tmp_path / "work")
    assert not cache.has(one.digest)


def _sized_bundles(tmp_path: Path, n: int) -> list[bundles.Bundle]:
    # Random content does not compress: each archive is a little over 10 kB.
    return [build_bundle(suite(tmp_path, {"data.bin": os.urandom(10_000)}, name=f"s{i}")) for i in range(n)]


def test_lru_evicts_the_least_recently_used_when_over_the_cap(tmp_path):
    a, b, c = _sized_bundles(tmp_path, 3)
    cache = BundleCache(tmp_path / "cache", max_bytes=len(a.data) + len(b.data) + len(c.data) - 1)
    cache.put(a.digest, a.data)
    cache.put(b.digest, b.data)
    cache.unpack(a.digest, tmp_path / "w")  # a is now used more recently than b
    cache.put(c.digest, c.data)
    assert [cache.has(x.digest) for x in (a, b, c)] == [True, False, True]
    assert cache.total_bytes() <= cache.max_bytes


def test_the_bundle_just_put_is_kept_even_when_it_alone_is_over_the_cap(tmp_path):
    a, b = _sized_bundles(tmp_path, 2)
    cache = BundleCache(tmp_path / "cache", max_bytes=100)
    cache.put(a.digest, a.data)
    assert cache.has(a.digest)
    cache.put(b.digest, b.data)
    assert not cache.has(a.digest) and cache.has(b.digest)
    cache.unpack(b.digest, tmp_path / "w")


def test_concurrent_puts_of_the_same_bundle_are_safe(tmp_path):
    bundle = build_bundle(suite(tmp_path))
    cache = BundleCache(tmp_path / "cache")
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def put() -> None:
        start.wait()
        try:
            cache.put(bundle.digest, bundle.data)
            cache.unpack(bundle.digest, tmp_path / "work" / threading.current_thread().name)
        except BaseException as e:  # noqa: BLE001 - reported by the assert below
            errors.append(e)

    threads = [threading.Thread(target=put, name=f"t{i}") for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [p.name for p in (tmp_path / "cache" / "bundles").iterdir()] == [f"{bundle.digest}.tar.gz"]


# ---------------------------------------------------------------------------------------------
# Venvs
# ---------------------------------------------------------------------------------------------


def test_venv_with_only_comments_imports_pytest_and_is_reused(tmp_path):
    bundle = build_bundle(suite(tmp_path, {"test_a.py": "", "requirements.txt": "# nothing needed\n\n"}))
    cache = BundleCache(tmp_path / "cache")
    cache.put(bundle.digest, bundle.data)
    venv = cache.venv(bundle.digest, "requirements.txt")
    assert venv.parent == tmp_path / "cache" / "venvs"
    python = venv / "bin" / "python"
    out = subprocess.run([python, "-c", "import sys, pytest; print(sys.prefix)"],
                         capture_output=True, text=True, check=True, timeout=60)
    assert Path(out.stdout.strip()) == venv, "the venv's python runs in the venv, pytest comes from the agent's"
    marker = venv / ".dtf-ready"
    made = marker.stat().st_mtime_ns
    assert cache.venv(bundle.digest, "requirements.txt") == venv
    assert marker.stat().st_mtime_ns == made, "not built again"
    # A second suite with the same requirements shares it.
    other = build_bundle(suite(tmp_path, {"test_b.py": "", "requirements.txt": "# nothing needed\n\n"}, name="other"))
    cache.put(other.digest, other.data)
    assert cache.venv(other.digest, "requirements.txt") == venv
    # A venv a crash left without its marker is built again.
    marker.unlink()
    (venv / "junk").write_text("")
    assert cache.venv(bundle.digest, "requirements.txt") == venv
    assert marker.is_file() and not (venv / "junk").exists()
    assert [p.name for p in (tmp_path / "cache" / "venvs").iterdir() if p.name.startswith(".")] == []


def test_two_tasks_asking_for_the_same_venv_build_it_once(tmp_path, monkeypatch):
    bundle = build_bundle(suite(tmp_path, {"requirements.txt": "# none\n"}))
    cache = BundleCache(tmp_path / "cache")
    cache.put(bundle.digest, bundle.data)
    builds: list[Path] = []
    real_build = BundleCache._build_venv

    def counting_build(self, digest, requirements, content, python, interpreter, target, deadline):
        builds.append(target)
        real_build(self, digest, requirements, content, python, interpreter, target, deadline)

    monkeypatch.setattr(BundleCache, "_build_venv", counting_build)
    start = threading.Barrier(4)
    got: list[Path] = []

    def ask() -> None:
        start.wait()
        got.append(cache.venv(bundle.digest, "requirements.txt"))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 4 and len(set(got)) == 1
    assert builds == [got[0]]


def test_venv_refuses_a_missing_or_escaping_requirements_path(tmp_path):
    bundle = build_bundle(suite(tmp_path))
    cache = BundleCache(tmp_path / "cache")
    cache.put(bundle.digest, bundle.data)
    with pytest.raises(BundleError, match="has no file 'requirements.txt'"):
        cache.venv(bundle.digest, "requirements.txt")
    with pytest.raises(BundleError, match="'..' in the path"):
        cache.venv(bundle.digest, "../requirements.txt")


@pytest.mark.slow
def test_a_failing_pip_install_reports_pip_output_and_leaves_no_venv(tmp_path):
    bundle = build_bundle(suite(tmp_path, {"requirements.txt": "--no-index\ndtf-no-such-package==1.0\n"}))
    cache = BundleCache(tmp_path / "cache")
    cache.put(bundle.digest, bundle.data)
    with pytest.raises(BundleError, match="pip install -r requirements.txt") as err:
        cache.venv(bundle.digest, "requirements.txt", timeout=300)
    assert "dtf-no-such-package" in str(err.value)
    assert [p for p in (tmp_path / "cache" / "venvs").iterdir() if p.suffix != ".lock"] == []
