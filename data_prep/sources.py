"""Reading and cleaning shared by the data_prep scripts.

- ``iter_entries``: the data files under an input path (a file, a folder, a zip or tar archive, nested
  zips included), in a stable order, each with an opener, so nothing is extracted that is not read.
  Zip member names stored as cp949 bytes without the UTF-8 flag (AI-Hub's archives) are decoded right.
- ``split_of``: the split ('train'/'validation') a path names and how (AI-Hub TL1/TS1/VL1/VS1 markers,
  Training/Validation/학습/검증 folders, train/dev/test words), innermost component first.
- ``iter_lines``: lines of a byte stream decoded one by one, so a byte that is not valid in the
  encoding is reported with its file and line (and a hint when the file decodes as cp949).
- ``iter_json_records``: the records of a JSON file read as a stream: a top-level list of objects,
  an object whose list values hold the records (``{"data": [...]}``), a single object (one record per
  file), or several objects one after another (JSON Lines). Memory stays at about one record; the cost
  is close to ``json.load`` (line numbers are counted once over the text, not once a record).
- ``clean_text``: NFC, control and invisible format characters removed, whitespace collapsed.
- ``iter_documents`` / ``iter_clean_documents``: the documents of monolingual text (wiki-extractor
  ``<doc>`` files, JSONL/JSON records with a ``text`` field, plain text by line, paragraph or file),
  as read by prepare_mono.py and expand_vocab.py; ``DEFAULT_EXCLUDE`` the files they leave out.
"""

import codecs
import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import unicodedata
import zipfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from fnmatch import fnmatch
from itertools import chain
from typing import BinaryIO

from common.data import DataError, parse_json_line

__all__ = [
    "DEFAULT_EXCLUDE", "Entry", "clean_text", "digest_entry", "hangul_share", "has_hangul", "iter_clean_documents",
    "iter_documents", "iter_entries", "iter_json_records", "iter_lines", "name_tokens", "NamedSplit", "part_path",
    "split_from_names", "split_of",
]

HANGUL = re.compile("[\u1100-\u11ff\u3130-\u318f\ua960-\ua97f\uac00-\ud7a3\ud7b0-\ud7ff]")
# Control characters (C0/C1 except tab/newline, handled as whitespace) and invisible format characters
# (zero-width space/joiners, direction marks and embeddings, word joiner, BOM, soft hyphen).
_INVISIBLE = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]"
)
_SPACES = re.compile(r"\s+")
_SPACES_NOT_NEWLINE = re.compile(r"[^\S\n]+")
_NEWLINES = re.compile(r"\r\n|[\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")


def clean_text(text: str, keep_newlines: bool = False) -> str:
    """NFC; control and invisible format characters dropped; runs of whitespace (NBSP, ideographic
    space, tabs, ...) become one space; ends stripped. With ``keep_newlines`` (documents), line breaks
    stay as single ``\\n`` between non-empty lines."""
    text = unicodedata.normalize("NFC", text)
    if not keep_newlines:
        return _SPACES.sub(" ", _INVISIBLE.sub("", text)).strip()
    text = _INVISIBLE.sub("", _NEWLINES.sub("\n", text))
    lines = (_SPACES_NOT_NEWLINE.sub(" ", line).strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


def has_hangul(text: str) -> bool:
    return HANGUL.search(text) is not None


def hangul_share(text: str) -> float:
    """Share of Hangul among the letters of ``text`` (0 when it has no letters)."""
    if not has_hangul(text):
        return 0.0  # the common case (an English side), without a loop over the characters
    letters = sum(ch.isalpha() for ch in text)
    return len(HANGUL.findall(text)) / letters if letters else 0.0


# ----------------------------------------------------------------------------------------------- entries

ARCHIVE_EXTS = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


@dataclass
class Entry:
    """One file of an input: ``name`` for messages (``archive.zip/dir/file.json``), ``parts`` the path
    components from the input itself down to the file (split and direction hints are read from them),
    ``open`` a binary stream, ``path`` a real file path when there is one."""
    name: str
    parts: tuple[str, ...]
    open: Callable[[], BinaryIO]
    size: int
    path: str | None = None

    @property
    def basename(self) -> str:
        return self.parts[-1]


def lower_ext(name: str) -> str:
    """The extension, ``.tar.gz``-style double extensions included, lower case ('' for none)."""
    low = name.lower()
    for ext in ARCHIVE_EXTS:
        if low.endswith(ext):
            return ext
    return os.path.splitext(low)[1]


def zip_member_name(info: zipfile.ZipInfo) -> str:
    """Member name as the archive's author wrote it. Without the UTF-8 flag (bit 11) Python decodes the
    bytes as cp437; Korean archives (AI-Hub) store cp949 bytes there, so re-decode: UTF-8 first
    (some tools omit the flag), then cp949, else keep the cp437 reading."""
    if info.flag_bits & 0x800:
        return info.filename
    raw = info.filename.encode("cp437")
    for encoding in ("utf-8", "cp949"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            pass
    return info.filename


def _iter_zip(zf: zipfile.ZipFile, name: str, parts: tuple[str, ...], stack: ExitStack) -> Iterator[Entry]:
    members = [(zip_member_name(i), i) for i in zf.infolist() if not i.is_dir()]
    for member, info in sorted(members, key=lambda m: m[0]):
        member_parts = tuple(p for p in member.replace("\\", "/").split("/") if p)
        if member_parts[-1].startswith(".") or "__MACOSX" in member_parts:
            continue
        full = f"{name}/{'/'.join(member_parts)}"
        if lower_ext(member) == ".zip":
            try:
                inner = stack.enter_context(zipfile.ZipFile(stack.enter_context(zf.open(info))))
            except zipfile.BadZipFile as e:
                raise DataError(f"{full}: not a readable zip archive ({e})") from None
            yield from _iter_zip(inner, full, parts + member_parts, stack)
        else:
            yield Entry(full, parts + member_parts, (lambda zf=zf, info=info: zf.open(info)), info.file_size)


def iter_entries(path: str, stack: ExitStack) -> Iterator[Entry]:
    """The files under ``path`` (a file, a folder, a zip or a tar archive), sorted by name, archives
    opened in place (zip) or unpacked into a temporary folder that ``stack`` removes (tar: its members
    cannot be read side by side). Hidden files are left out."""
    path = os.path.normpath(path)
    top = os.path.basename(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or folder")
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for f in sorted(files):
                if f.startswith("."):
                    continue
                full = os.path.join(root, f)
                rel = os.path.relpath(full, path).split(os.sep)
                yield from _file_entries(full, (top, *rel), stack)
        return
    yield from _file_entries(path, (top,), stack)


def _file_entries(path: str, parts: tuple[str, ...], stack: ExitStack) -> Iterator[Entry]:
    ext = lower_ext(path)
    if ext == ".zip":
        try:
            zf = stack.enter_context(zipfile.ZipFile(path))
        except zipfile.BadZipFile as e:
            raise DataError(f"{path}: not a readable zip archive ({e})") from None
        yield from _iter_zip(zf, path, parts, stack)
    elif ext in ARCHIVE_EXTS:
        tmp = tempfile.mkdtemp(prefix="data_prep_tar_")
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        try:
            with tarfile.open(path) as tf:
                tf.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"{path}: not a readable tar archive ({e})") from None
        for entry in iter_entries(tmp, stack):
            inner = entry.parts[1:]
            yield Entry(f"{path}/{'/'.join(inner)}", parts + inner, entry.open, entry.size, entry.path)
    else:
        yield Entry(path, parts, (lambda: open(path, "rb")), os.path.getsize(path), path)


def digest_entry(entry: Entry) -> bytes:
    """Content hash of an entry (byte-identical copies have the same digest)."""
    h = hashlib.blake2b(digest_size=16)
    with entry.open() as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.digest()


_NAME_TOKEN = re.compile("[0-9a-z]+|[\uac00-\ud7a3]+")
# AI-Hub's split markers: TL/TS (training labels/source), VL/VS (validation), numbered or not (TL1, VS_2).
_SPLIT_MARKER = re.compile(r"(tl|ts|vl|vs)\d*")
TRAIN_WORDS = {"train", "training", "훈련", "학습"}
VALIDATION_WORDS = {"valid", "validation", "val", "dev", "test", "검증"}
# Korean names glue words together (학습데이터, 검증용): a Hangul token that starts with one of these.
_TRAIN_PREFIXES, _VALIDATION_PREFIXES = ("훈련", "학습"), ("검증",)


def name_tokens(name: str) -> list[str]:
    """Lower-case runs of Latin letters and digits, and runs of Hangul syllables, of ``name``
    (``TL1_구어체.zip`` -> tl1, 구어체, zip; ``VL방송`` -> vl, 방송)."""
    return _NAME_TOKEN.findall(unicodedata.normalize("NFC", name).lower())


def _token_split(token: str) -> tuple[str, bool] | None:
    """(split, is an AI-Hub marker) that one name token stands for, or None."""
    if _SPLIT_MARKER.fullmatch(token):
        return ("train" if token[0] == "t" else "validation"), True
    if token in TRAIN_WORDS or token.startswith(_TRAIN_PREFIXES):
        return "train", False
    if token in VALIDATION_WORDS or token.startswith(_VALIDATION_PREFIXES):
        return "validation", False
    return None


@dataclass(frozen=True)
class NamedSplit:
    """A split named by a path: ``split`` ('train' or 'validation'), ``by`` ('marker': an AI-Hub
    TL/TS/VL/VS marker; 'folder': a word in a folder or archive above the file; 'file name': a word in
    the file's own name), ``index`` of the path component that named it."""
    split: str
    by: str
    index: int


def split_of(parts: tuple[str, ...]) -> NamedSplit | None:
    """The split that the path components name, innermost first (the first component that names
    exactly one split decides): AI-Hub markers TL1/TL2/TS1/TL_ (train) and VL1/VS1/VL_ (validation);
    the words train, training, 훈련, 학습 (학습데이터, ...) and valid, validation, val, dev, test, 검증
    (검증데이터, ...). None when no component does."""
    for index in range(len(parts) - 1, -1, -1):
        found = [t for t in map(_token_split, name_tokens(parts[index])) if t]
        splits = {split for split, _ in found}
        if len(splits) == 1:
            if any(marker for _, marker in found):
                by = "marker"
            else:
                by = "file name" if index == len(parts) - 1 else "folder"
            return NamedSplit(splits.pop(), by, index)
    return None


def split_from_names(parts: tuple[str, ...]) -> str | None:
    """'train' or 'validation' when a path component names the split (see ``split_of``), else None."""
    named = split_of(parts)
    return named.split if named else None


def part_path(entry: Entry, index: int) -> str:
    """The full name of ``entry``'s path down to component ``index`` (a folder, an archive, or the file)."""
    tail = "/".join(entry.parts[index + 1:])
    return entry.name[: len(entry.name) - len(tail) - 1] if tail else entry.name


# ------------------------------------------------------------------------------------------------- text


def decode_hint(raw: bytes, encoding: str) -> str:
    if encoding.lower().replace("-", "") in ("utf8", "utf8sig"):
        try:
            raw.decode("cp949")
            return "; it decodes as cp949: pass --encoding cp949"
        except UnicodeDecodeError:
            pass
    return ""


def iter_lines(f: BinaryIO, name: str, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """(line number, text with its line break) for each line of a binary stream; a byte sequence that
    is not ``encoding`` raises ``DataError`` naming ``name:line``. A UTF-8 BOM is dropped."""
    for lineno, raw in enumerate(f, start=1):
        try:
            line = raw.decode(encoding)
        except UnicodeDecodeError as e:
            hint = decode_hint(raw, encoding)
            raise DataError(f"{name}:{lineno}: not {encoding} text (bad byte at column {e.start + 1}{hint})") from None
        if lineno == 1:
            line = line.lstrip("\ufeff")
        yield lineno, line


# ------------------------------------------------------------------------------------------------- JSON

_WS = re.compile(r"[ \t\r\n\ufeff]*")
_NUMBER_TAIL = re.compile(r"[0-9.eE+\-]*\Z")


class _JsonStream:
    """Incremental JSON reading over a binary stream: whitespace skipping, one value at a time.

    Line numbers (for ``where`` and errors) are counted incrementally: ``line_at`` counts the line
    breaks between the last position asked about and the new one, so the whole file is scanned for
    line breaks once (a C loop), not once a record."""

    CHUNK = 1 << 20

    def __init__(self, f: BinaryIO, name: str, encoding: str):
        self.f, self.name, self.encoding = f, name, encoding
        self.decoder = codecs.getincrementaldecoder(encoding)()
        self.json = json.JSONDecoder()
        self.buf, self.pos, self.eof = "", 0, False
        self.line_index, self.line_number = 0, 1  # buf[line_index] is on line line_number

    def more(self) -> bool:
        """Read another chunk into the buffer (dropping what was consumed); False at end of file. A
        chunk is at least as long as the unconsumed text, so a value longer than ``CHUNK`` is decoded
        again only O(log size) times."""
        if self.eof:
            return False
        raw = self.f.read(max(self.CHUNK, len(self.buf) - self.pos))
        try:
            text = self.decoder.decode(raw, final=not raw)
        except UnicodeDecodeError as e:
            line = self.line_at(len(self.buf)) + raw[: e.start].count(b"\n")
            hint = decode_hint(raw[e.start:e.start + 64], self.encoding)
            raise DataError(f"{self.name}:{line}: not {self.encoding} text{hint}") from None
        self.eof = not raw
        if self.pos:
            self.line_at(self.pos)
            self.buf, self.line_index, self.pos = self.buf[self.pos:], self.line_index - self.pos, 0
        self.buf += text
        return True

    def line_at(self, index: int) -> int:
        """Line number of ``buf[index]``, counted on from the last index asked about."""
        if index >= self.line_index:
            self.line_number += self.buf.count("\n", self.line_index, index)
        else:
            self.line_number -= self.buf.count("\n", index, self.line_index)
        self.line_index = index
        return self.line_number

    def error(self, message: str, index: int | None = None) -> DataError:
        line = self.line_at(self.pos if index is None else index)
        return DataError(f"{self.name}:{line}: not valid JSON ({message})")

    def skip_ws(self) -> int:
        """Moves ``pos`` past whitespace (reading on as needed); returns it."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf) or not self.more():
                return self.pos

    def peek(self, offset: int = 0) -> str:
        """The next non-whitespace character at or after ``pos + offset`` ('' at end of file)."""
        while True:
            i = _WS.match(self.buf, self.pos + offset).end()
            if i < len(self.buf):
                return self.buf[i]
            if not self.more():
                return ""

    def take(self, expected: str) -> None:
        if self.peek() != expected:
            raise self.error(f"expected {expected!r}")
        self.pos = _WS.match(self.buf, self.pos).end() + 1

    def value(self):
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            try:
                obj, end = self.json.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as e:
                if self.more():
                    continue
                raise self.error(e.msg, e.pos) from None
            if (isinstance(obj, (int, float)) and not isinstance(obj, bool) and not self.eof
                    and _NUMBER_TAIL.match(self.buf, end) and self.more()):
                continue  # a number the chunk boundary may have cut ('12' of '12.5e3'): decode again
            self.pos = end
            return obj


def iter_json_records(f: BinaryIO, name: str, encoding: str = "utf-8") -> Iterator[tuple[object, str]]:
    """(record, 'file:line') for each record of a JSON file, reading it as a stream.

    Top-level lists yield their items; a top-level object yields the items of each of its list values
    whose items are objects (``{"data": [...]}``, metadata keys anywhere), or itself when it has none
    (one record per file); JSON values one after another (JSON Lines) are read in turn. Invalid JSON
    and non-UTF-8 bytes raise ``DataError`` with the line.
    """
    s = _JsonStream(f, name, encoding)

    def array_items():
        s.take("[")
        if s.peek() == "]":
            s.take("]")
            return
        while True:
            where = f"{name}:{s.line_at(s.skip_ws())}"
            yield s.value(), where
            c = s.peek()
            if c == "]":
                s.take("]")
                return
            s.take(",")

    while (c := s.peek()) != "":
        if c == "[":
            yield from array_items()
        elif c == "{":
            start = f"{name}:{s.line_at(s.skip_ws())}"
            s.take("{")
            scalars, streamed = {}, False
            if s.peek() == "}":
                s.take("}")
            else:
                while True:
                    key = s.value()
                    if not isinstance(key, str):
                        raise s.error("object key is not a string")
                    s.take(":")
                    if s.peek() == "[" and s.peek(offset=_WS.match(s.buf, s.pos).end() - s.pos + 1) == "{":
                        streamed = True
                        yield from array_items()
                    else:
                        scalars[key] = s.value()
                    c = s.peek()
                    if c == "}":
                        s.take("}")
                        break
                    s.take(",")
            if not streamed:
                yield scalars, start
        else:
            raise s.error("expected an object or a list at the top level")


# -------------------------------------------------------------------------------------------- documents

# Files left out of monolingual inputs by default: they describe a corpus, they are not its text.
DEFAULT_EXCLUDE = ["*/README*", "*/LICENSE*", "*/LICENCE*", "*/PROVENANCE*"]
_DOC_OPEN = re.compile(r"<doc\b[^>]*>\s*$")


def iter_documents(entry: Entry, encoding: str = "utf-8",
                   plain_text_unit: str = "line") -> Iterator[tuple[str, str, str | None]]:
    """(raw text, 'file:line', lang or None) for each document of one file, format found by content."""
    ext = lower_ext(entry.basename)
    if ext == ".jsonl":
        with entry.open() as f:
            for n, line in iter_lines(f, entry.name, encoding):
                if line.strip():
                    yield _record_text(parse_json_line(line, f"{entry.name}:{n}"), f"{entry.name}:{n}")
        return
    if ext == ".json":
        with entry.open() as f:
            for record, where in iter_json_records(f, entry.name, encoding):
                yield _record_text(record, where)
        return
    with entry.open() as f:
        lines = iter_lines(f, entry.name, encoding)
        first = next(((n, line) for n, line in lines if line.strip()), None)
        if first is None:
            return
        if first[1].lstrip().startswith("<doc"):
            yield from _wiki_docs(first, lines, entry.name)
        elif plain_text_unit == "line":
            yield first[1], f"{entry.name}:{first[0]}", None
            for n, line in lines:
                if line.strip():
                    yield line, f"{entry.name}:{n}", None
        elif plain_text_unit == "paragraph":
            para, start = [first[1]], first[0]
            for n, line in lines:
                if line.strip():
                    if not para:
                        start = n
                    para.append(line)
                elif para:
                    yield "".join(para), f"{entry.name}:{start}", None
                    para = []
            if para:
                yield "".join(para), f"{entry.name}:{start}", None
        elif plain_text_unit == "file":
            yield first[1] + "".join(line for _, line in lines), f"{entry.name}:{first[0]}", None
        else:
            raise ValueError(f"--plain_text_unit must be line, paragraph or file, got {plain_text_unit!r}")


def _record_text(record, where: str) -> tuple[str, str, str | None]:
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        found = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise DataError(f"{where}: expected a JSON object with a string 'text' field (found: {found})")
    lang = record.get("lang")
    return record["text"], where, lang if lang in ("ko", "en") else None


def _wiki_docs(first: tuple[int, str], lines: Iterator[tuple[int, str]],
               name: str) -> Iterator[tuple[str, str, None]]:
    """wiki-extractor output: ``<doc ...>`` line, the article (title first), ``</doc>`` line."""
    body, start = None, None
    for n, line in chain((first,), lines):
        s = line.strip()
        if _DOC_OPEN.match(s):
            if body is not None:
                raise DataError(f"{name}:{n}: <doc> inside the document opened at line {start} (missing </doc>)")
            body, start = [], n
        elif s == "</doc>":
            if body is None:
                raise DataError(f"{name}:{n}: </doc> without an opening <doc>")
            yield "".join(body), f"{name}:{start}", None
            body = None
        elif body is not None:
            body.append(line)
        elif s:
            raise DataError(f"{name}:{n}: text outside <doc> ... </doc> in a wiki-extractor file")
    if body is not None:
        raise DataError(f"{name}:{start}: <doc> is never closed (missing </doc>)")


def iter_clean_documents(inputs: list[str], stack: ExitStack, encoding: str = "utf-8", plain_text_unit: str = "line",
                         exclude: list[str] = ()) -> Iterator[tuple[str, str, str, str | None]]:
    """(input, cleaned text, where, lang given by the record) for every document of every input."""
    for spec in inputs:
        for entry in iter_entries(spec, stack):
            if any(fnmatch(entry.name, p) for p in exclude):
                continue
            for text, where, lang in iter_documents(entry, encoding, plain_text_unit):
                yield spec, clean_text(text, keep_newlines=True), where, lang
