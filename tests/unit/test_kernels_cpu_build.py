"""The CPU kernels' build cache: one build per source content, whichever checkout loads it."""
from __future__ import annotations

from qfid.kernels import cpu_build


def test_sources_are_compiled_from_a_copy_inside_the_build_folder(tmp_path):
    """torch's build files record source paths: compiling each checkout's own paths made a
    second checkout of the same sources rebuild the shared library. The copy is what gets
    compiled, byte for byte the sources, and a second call leaves it untouched."""
    folder = cpu_build._stable_sources(tmp_path)
    assert folder.parent == tmp_path
    names = cpu_build._SOURCES + cpu_build._HEADERS
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)
    for name in names:
        assert (folder / name).read_bytes() == (cpu_build.source_dir() / name).read_bytes()
    stamps = {name: (folder / name).stat().st_mtime_ns for name in names}
    assert cpu_build._stable_sources(tmp_path) == folder
    assert {name: (folder / name).stat().st_mtime_ns for name in names} == stamps


def test_build_folder_is_named_by_content_not_location(tmp_path, monkeypatch):
    """Two checkouts with the same sources get the same build folder; a changed source a new one."""
    monkeypatch.setattr(cpu_build, "cache_dir", lambda: tmp_path / "cache")
    copy = tmp_path / "checkout"
    copy.mkdir()
    for name in cpu_build._SOURCES + cpu_build._HEADERS:
        (copy / name).write_bytes((cpu_build.source_dir() / name).read_bytes())
    original = cpu_build._build_dir()
    monkeypatch.setattr(cpu_build, "source_dir", lambda: copy)
    assert cpu_build._build_dir() == original
    (copy / cpu_build._SOURCES[0]).write_bytes(b"// changed\n")
    assert cpu_build._build_dir() != original
