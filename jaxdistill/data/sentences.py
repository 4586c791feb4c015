"""TFDS builder `pysentences`: English sentences from Python's own documentation, offline.

Two sources, both shipped with every CPython (nothing is downloaded):

1. the pydoc topics, as the `pytext` corpus cuts them (`jaxdistill.data.text.documents`);
2. the docstrings of a fixed list of standard-library modules (`MODULES`: each module and
   its public classes, functions and methods, as ``inspect.getdoc`` gives them). The topics
   alone hold about 2,200 distinct prose sentences: too few for several thousand training
   sentences *and* a held-out set of more than 500.

Sentences (deterministic): a text is cut into paragraphs at blank lines; list bullets are
stripped and lines joined; paragraphs holding doctests (``>>>``) or grammar (``::=``) and
section headings are dropped; paragraphs are cut after ``.``, ``?`` or ``!`` followed by a
capital or a quote. A piece is kept when it reads as prose (`is_prose`: 4 to 80 words,
starts with a capital or a quote, ends with ``.``/``?``/``!``, at least 70 % of its tokens
are words), and exact duplicates are removed.

Split (a pure function of the text, so no sentence is in both): ``test`` when
``int(sha256(sentence), 16) % 8 == 0``, else ``train``. On Python 3.11.7 that gives 5,382
train and 745 test sentences.

Reproducibility caveat (as for `pytext`): the text is whatever the preparing interpreter
ships; the prepared dataset records ``python_version``, the modules read and the
``sha256`` of its sentences in ``builder.info.metadata``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import io
import os
import platform
import re
from collections.abc import Iterator

import tensorflow_datasets as tfds

from jaxdistill.data import text
from jaxdistill.data.pipeline import prepare_offline

NAME = 'pysentences'
TEST_MODULUS = 8  # 1 in 8 sentences (by hash) is test
MODULES = tuple("""
abc argparse ast asyncio base64 bisect calendar collections contextlib copy csv dataclasses
datetime decimal difflib email.message enum fractions ftplib functools gettext glob gzip
hashlib heapq hmac html.parser http.client http.cookies imaplib inspect io ipaddress json
logging mailbox multiprocessing numbers operator optparse os pathlib pickle pprint queue random
re sched secrets selectors shlex shutil smtplib socket sqlite3 statistics string struct
subprocess tarfile tempfile textwrap threading timeit tokenize traceback typing unittest
urllib.parse urllib.request uuid warnings weakref xml.dom.minidom xml.etree.ElementTree zipfile
zoneinfo""".split())
_BOUNDARY = re.compile(r'(?<=[.!?])\s+(?=[A-Z(“"\'*])')
_BULLET = re.compile(r'^\s*(?:[*\-•]|\d+\.|\(\d+\))\s+')
_WORD = re.compile(r'[(“"\'*]*[A-Za-z][A-Za-z\'’-]*[)”"\'*,.;:?!]*')
_RULE = re.compile(r'[=*\-~^]+')


def split_sentences(doc: str) -> Iterator[str]:
    """Candidate sentences of one text, whitespace-normalised (not yet filtered)."""
    for para in re.split(r'\n\s*\n', doc):
        lines = [_BULLET.sub('', line).strip() for line in para.split('\n')]
        if len(lines) >= 2 and _RULE.fullmatch(lines[-1]):
            continue  # a section heading
        joined = ' '.join(lines)
        if '>>>' in joined or '::=' in joined:
            continue
        for piece in _BOUNDARY.split(joined):
            yield ' '.join(piece.split())


def is_prose(sentence: str) -> bool:
    """4-80 words, a capital (or quote) first, final punctuation, >= 70 % word-like tokens."""
    words = sentence.split()
    if not 4 <= len(words) <= 80 or sentence[-1] not in '.?!':
        return False
    if not (sentence[0].isupper() or sentence[0] in '"“*('):
        return False
    return sum(bool(_WORD.fullmatch(w)) for w in words) >= 0.7 * len(words)


def _docstrings(module_name: str) -> Iterator[str]:
    module = importlib.import_module(module_name)
    yield inspect.getdoc(module) or ''
    for name, obj in sorted(vars(module).items()):
        if name.startswith('_') or getattr(obj, '__module__', None) != module.__name__:
            continue
        yield inspect.getdoc(obj) or ''
        if inspect.isclass(obj):
            for attr, member in sorted(vars(obj).items()):
                if callable(member) and (not attr.startswith('_') or attr == '__init__'):
                    yield inspect.getdoc(member) or ''


def sentences() -> tuple[list[str], list[str]]:
    """``(sorted distinct sentences, modules read)`` of this interpreter's documentation."""
    texts = [doc for _, doc in text.documents()]
    read = []
    for name in MODULES:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                texts += list(_docstrings(name))
            read.append(name)
        except ImportError:  # e.g. a Python built without sqlite3: recorded in metadata
            continue
    found = {s for doc in texts for s in split_sentences(doc) if is_prose(s)}
    return sorted(found), read


def split_of(sentence: str) -> str:
    """``'test'`` or ``'train'``: a pure function of the sentence."""
    digest = int(hashlib.sha256(sentence.encode('utf-8')).hexdigest(), 16)
    return 'test' if digest % TEST_MODULUS == 0 else 'train'


def _digest(items: list[str]) -> str:
    h = hashlib.sha256()
    for s in items:
        h.update(s.encode('utf-8') + b'\0')
    return h.hexdigest()


class Pysentences(tfds.core.GeneratorBasedBuilder):
    """Prose sentences of Python's documentation as a TFDS dataset (ArrayRecord)."""

    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'pydoc topics + stdlib docstrings, prose sentences, 1/8 test '
                              'by sha256(sentence).'}

    def _info(self) -> tfds.core.DatasetInfo:
        found, read = sentences()
        return tfds.core.DatasetInfo(
            builder=self, description=__doc__,
            features=tfds.features.FeaturesDict({'text': tfds.features.Text()}),
            homepage='https://docs.python.org/3/',
            metadata=tfds.core.MetadataDict(python_version=platform.python_version(),
                                            sha256=_digest(found), sentences=len(found),
                                            modules=read))

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download: the text ships with Python
        found, _ = sentences()
        return {split: self._generate_examples([s for s in found if split_of(s) == split])
                for split in ('train', 'test')}

    def _generate_examples(self, items):
        for s in items:
            yield hashlib.sha256(s.encode('utf-8')).hexdigest(), {'text': s}


def load(data_dir: str, split: str) -> list[str]:
    """The sentences of ``split``, sorted (TFDS stores them in hash order); prepares once."""
    b = tfds.builder(NAME, data_dir=os.path.expanduser(data_dir))
    if not b.is_prepared():
        prepare_offline(b)
    source = b.as_data_source(split=split)
    return sorted(source[i]['text'].decode('utf-8') for i in range(len(source)))


def version(data_dir: str) -> str:
    return str(tfds.builder(NAME, data_dir=os.path.expanduser(data_dir)).info.version)


def metadata(data_dir: str) -> dict:
    """What the preparing interpreter recorded: python_version, sha256, sentences, modules."""
    return dict(tfds.builder(NAME, data_dir=os.path.expanduser(data_dir)).info.metadata)
