"""Bad input gets a clear error naming the field, the file or the line, and costs nothing else (issue 16's
known defects: 500s on deep or huge JSON, JSON read from text/plain bodies, decode errors naming a buffer,
a catalogue refused whole for one line of bad bytes, a KeyError for a missing SPD column)."""

from __future__ import annotations

import pytest
from fastapi import HTTPException
from starlette.requests import Request

from hitmodels import audio, features
from hitmodels.config import InputPolicy
from hitmodels.data import invalid_utf8_lines, load_spd, read_manifest, read_spd_csv
from serve.app import check_json_content_type, load_json, parse_rows, validate_rows


def detail(exc: pytest.ExceptionInfo) -> list[dict]:
    return exc.value.detail


def test_deep_and_huge_json_is_a_422_naming_the_field():
    deep = b'{"rows": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    with pytest.raises(HTTPException) as exc:
        parse_rows(deep)
    print(f"JSON nested 10,000 deep: {exc.value.status_code} {detail(exc)}")
    assert exc.value.status_code == 422 and "nested too deeply" in detail(exc)[0]["msg"]
    with pytest.raises(HTTPException) as exc:
        load_json(b'{"a": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", ["body", "metadata"])
    assert detail(exc)[0]["loc"] == ["body", "metadata"]

    huge = b'{"rows": [{"x": 1' + b"0" * 400 + b', "y": 2}]}'  # 10^400: past orjson's 64 bits and float64
    rows = parse_rows(huge)
    with pytest.raises(HTTPException) as exc:
        validate_rows(rows, ["x", "y"])
    print(f"an integer of 10^400: {exc.value.status_code} {detail(exc)}")
    assert exc.value.status_code == 422 and detail(exc)[0]["loc"] == ["body", "rows", 0, "x"]
    # Python's own literals still parse (and an ordinary integer stays an integer)
    assert parse_rows(b'{"rows": [{"x": NaN, "y": 12, "track_id": 7}]}')[0]["track_id"] == 7
    with pytest.raises(HTTPException) as exc:
        parse_rows(b'{"rows": [')
    assert exc.value.status_code == 422 and detail(exc)[0]["msg"].startswith("invalid JSON")


@pytest.mark.parametrize("declared, ok", [(None, True), ("application/json", True),
                                          ("application/json; charset=utf-8", True), ("application/vnd.x+json", True),
                                          ("text/plain", False), ("application/x-www-form-urlencoded", False)])
def test_a_body_declared_as_something_else_is_a_415(declared, ok):
    headers = [] if declared is None else [(b"content-type", declared.encode())]
    request = Request({"type": "http", "method": "POST", "path": "/predict", "headers": headers})
    if ok:
        check_json_content_type(request)
        return
    with pytest.raises(HTTPException) as exc:
        check_json_content_type(request)
    print(f"Content-Type {declared}: {exc.value.status_code} {detail(exc)}")
    assert exc.value.status_code == 415 and detail(exc)[0]["loc"] == ["header", "content-type"]


def test_decode_errors_name_the_file_not_a_buffer(tmp_path):
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"not audio at all " * 50)
    row = features.extract_row("t", str(junk), None, policy=InputPolicy(local_roots=(str(tmp_path),)))
    print(f"not audio: {row['error']}")
    assert row["error"].startswith(f"undecodable: {junk}") and "BytesIO" not in row["error"]
    with pytest.raises(audio.AudioError) as exc:
        audio.decode(b"\x00" * 1000, name="upload.wav")
    assert "upload.wav" in str(exc.value) and "0x" not in str(exc.value)


def test_bad_bytes_in_a_manifest_cost_only_their_rows(tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(b"track_id,audio_uri,lyrics\n"
                         b"a,a.wav,hello there\n"
                         b"b,b.wav,caf\xe9 ol\xe9\n"
                         b"c,sub/c.wav,fine\n")
    df = read_manifest(manifest)
    err = capsys.readouterr().err
    print(f"manifest with bad bytes on line 3: {len(df)} rows read; warning: {err.strip()}")
    assert list(df["track_id"]) == ["a", "b", "c"] and "line(s) 3" in err and str(manifest) in err
    assert df.loc[1, "lyrics"] == "caf\ufffd ol\ufffd"
    # relative paths are relative to the manifest, resolved here and not in a worker's directory
    assert df.loc[2, "audio_uri"] == str(tmp_path.resolve() / "sub" / "c.wav")
    assert invalid_utf8_lines(b"ok\n\xff\nok\n\xfe".splitlines(keepends=True)) == [2, 4]


def test_an_spd_table_without_a_required_column_names_it(tmp_path):
    tracks = tmp_path / "spotify_tracks.csv"
    tracks.write_text("name,popularity\nsong,40\n")
    with pytest.raises(ValueError) as exc:
        read_spd_csv(tracks, "tracks")
    print(f"spotify_tracks.csv without id: {exc.value}")
    assert "'id'" in str(exc.value) and str(tracks) in str(exc.value) and "name, popularity" in str(exc.value)
    tracks.write_text("")
    with pytest.raises(ValueError, match="is empty"):
        read_spd_csv(tracks, "tracks")
    for name in ("spotify_artists.csv", "spotify_albums.csv"):
        (tmp_path / name).write_text("")  # empty side tables are allowed: their features become NaN
    tid = "0" * 22  # a Spotify id
    tracks.write_text(f"id,artists_id,available_markets,album_id,popularity\n{tid},['a1'],['US'],al1,50\n")
    cat = load_spd(tmp_path)
    assert list(cat.tracks["id"]) == [tid] and cat.artists.empty and cat.albums.empty
