"""Conditioning text from data: the prompt strategies of PRISM, LoRA-fairness, DGM-VLC and MEP-LDM.

Each strategy (``prompts.strategies`` in config.yaml) turns every dataset row into one piece of text:

- ``labels``: PRISM (Kumar et al., MIDL 2025, ``finetune_chexpert.py``). The positive findings (value 1
  only; 0, uncertain and missing are absent) in the order of ``dataset.labels``, joined by ", " with their
  original capitalisation into "Chest X-ray showing {findings}"; "Normal chest X-ray with no significant
  findings" when none is positive. "No Finding" is a finding like any other ("Chest X-ray showing No
  Finding").
- ``demographics``: the LoRA-fairness prompt (Rehman et al., ``synthetic_dataset_creation.py``)
  "Chest X-ray of a {age}-year-old {race} {sex} patient showing {findings}", findings lower-cased and
  "No Finding" read as "no significant findings".
- ``tabular``: DGM-VLC (Xing et al., arXiv 2410.13823, ``generate_prompts.ipynb``): clinical fields
  rendered with per-field phrasing after per-field cleaning; missing values are left out of the sentence.
- ``mep``: MEP-LDM (Osorio et al., Diagnostics 2024): "Chest X-Ray image with morphology type {cluster}"
  with the k-means cluster of the image's DINO embedding spelled in words ("thirty-two"), or for histology
  "Histology image of {label} tissue, morphology type {cluster}" with the lower-cased class name.

``labels`` and ``demographics`` are one caption template with different settings. Templates use
``{field}`` placeholders; a field that is missing for a row (NaN age, a race listed in ``unknown_values``)
removes the whole word it is part of ("{age}-year-old"), and the indefinite article in front of every word
is then chosen for the word that follows ("an 18-year-old", "a white"), so no "nan", no double spaces.
Several strategies combine in the order listed: their texts joined by ``prompts.separator``, with the
trailing full stop of every text but the last removed.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from workflow.common.errors import InputError
from workflow.common.manifest import CORE_COLUMNS, label_column, tabular_column
from workflow.prompts.settings import (
    CaptionSettings,
    ClassSettings,
    MepTemplate,
    PromptSettings,
    TabularField,
    TabularSettings,
)

STRATEGIES: tuple[str, ...] = ("labels", "demographics", "tabular", "mep")
DEMOGRAPHIC_FIELDS: tuple[str, ...] = ("age", "sex", "race", "view", "projection", "site")
CAPTION_FIELDS: tuple[str, ...] = ("findings", *DEMOGRAPHIC_FIELDS)
MEP_FIELDS: tuple[str, ...] = ("cluster", "label")

_FIELD = re.compile(r"\{(\w+)\}")
_ARTICLE = re.compile(r"(?<![\w-])(a|an) (\S+)")
_LEADING_NUMBER = re.compile(r"(\d+)")
_ONES = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
)  # fmt: skip
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_A_BEFORE_VOWEL = ("one", "once", "uni", "use", "usu", "uti", "ute", "ure", "uro", "eu", "ewe", "ubiq")
_SILENT_H = ("hour", "honest", "honor", "honour", "heir")
# capitalised words starting with a letter whose name starts with a vowel, unless pronounceable (inflect)
_ABBREVIATION = re.compile(
    r"^(?!FJO|[HLMNS]Y.|RY[EO]|SQU|(F[LR]?|[HL]|MN?|N|RH?|S[CHKLMNPTVW]?|X(YL)?)[AEIOU])[FHLMNRSX][A-Z]"
)


def template_fields(template: str, allowed: Iterable[str], key: str) -> list[str]:
    """The ``{field}`` names of a template; raise naming config ``key`` for any other placeholder."""
    allowed = tuple(allowed)
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise InputError(f"{key} = {template!r} is not a valid template ({err})") from None
    names = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in allowed or spec or conversion:
            shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise InputError(
                f"{key} uses unknown template field {shown}; the fields are "
                + ", ".join("{" + a + "}" for a in allowed)
            )
        names.append(name)
    return names


def number_words(number: int) -> str:
    """``number`` (0 to 999,999) in English words, as MEP-LDM spells cluster indices.

    MEP-LDM uses inflect's ``number_to_words``; this writes the same: 0 "zero", 32 "thirty-two",
    101 "one hundred and one", 1234 "one thousand, two hundred and thirty-four".

    Written here rather than imported because inflect takes seconds to import (typeguard instruments it),
    in every job that builds prompts.
    """
    if not 0 <= number < 1_000_000:
        raise ValueError(f"number_words covers 0..999,999, not {number}")
    if number < 20:
        return _ONES[number]
    if number < 100:
        tens, ones = divmod(number, 10)
        return _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")
    if number < 1000:
        hundreds, rest = divmod(number, 100)
        return f"{_ONES[hundreds]} hundred" + (f" and {number_words(rest)}" if rest else "")
    thousands, rest = divmod(number, 1000)
    joiner = ", " if rest >= 100 else " and "
    return f"{number_words(thousands)} thousand" + (joiner + number_words(rest) if rest else "")


def _spelled_out(capitals: str) -> bool:
    """Whether a capitalised word is read letter by letter: one letter, a short U... ("UK"), or F, H, L,
    M, N, R, S or X starting an unpronounceable word ("MRI", "NSCLC"; inflect's rule; not "MALE")."""
    return (
        len(capitals) == 1
        or (capitals[0] == "U" and len(capitals) <= 3)
        or bool(_ABBREVIATION.match(capitals))
    )


@functools.lru_cache(maxsize=4096)
def indefinite_article(word: str) -> str:
    """The indefinite article, "a" or "an", for ``word`` by its first sound.

    Numbers are read out ("an 18-year-old", "an 80-year-old"), capitalised abbreviations by their letter
    names ("an MRI", "an X-ray"), and the usual exceptions to the spelling are handled ("a one",
    "a university", "a European", "an hour", "an honest").
    """
    digits = _LEADING_NUMBER.match(word)
    if digits and int(digits.group(1)) < 1_000_000:
        word = number_words(int(digits.group(1)))
    head = re.split(r"[-\s]", word, maxsplit=1)[0]
    if head.isalpha() and head.isupper() and _spelled_out(head):
        return "an" if head[0] in "AEFHILMNORSX" else "a"
    lower = word.lower()
    if lower.startswith(_A_BEFORE_VOWEL):
        return "a"
    return "an" if lower[:1] in "aeiou" or lower.startswith(_SILENT_H) else "a"


def fix_articles(text: str) -> str:
    """Choose "a"/"an" for the word after each lower-case indefinite article (:func:`indefinite_article`)."""
    return _ARTICLE.sub(lambda m: f"{indefinite_article(m.group(2))} {m.group(2)}", text)


def render(template: str, values: Mapping[str, str | None]) -> str:
    """Fill ``{field}`` placeholders; a word whose field is missing (None or "") is left out entirely."""
    words = []
    for word in template.split():
        if any(not values.get(name) for name in _FIELD.findall(word)):
            continue
        words.append(_FIELD.sub(lambda m: str(values[m.group(1)]), word))
    return fix_articles(" ".join(words))


def format_value(value: Any) -> str:
    """A table value as text: integral numbers without ".0", other numbers in their shortest form."""
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | float | np.integer | np.floating):
        number = float(value)
        return str(int(number)) if number.is_integer() else repr(number)
    return str(value).strip()


def is_missing(value: Any) -> bool:
    """NaN, None, pd.NA and blank strings are missing."""
    if isinstance(value, str):
        return not value.strip()
    return value is None or bool(pd.isna(value))


def positive_findings(frame: pd.DataFrame, labels: Sequence[str]) -> list[list[str]]:
    """Per row, the findings whose value is exactly 1, in the order of ``labels`` (PRISM's rule)."""
    missing = [name for name in labels if label_column(name) not in frame]
    if missing:
        raise InputError(f"dataset lacks label columns for {missing} (dataset.labels)")
    if not labels:
        return [[] for _ in range(len(frame))]
    positive = frame[[label_column(name) for name in labels]].to_numpy(dtype=float) == 1.0
    names = np.asarray(labels, dtype=object)
    return [list(names[row]) for row in positive]


def findings_phrase(names: Sequence[str], separator: str, last_separator: str) -> str:
    """Join finding names: "a, b" with PRISM's separators, "a, b and c" with ``last_separator`` " and "."""
    if len(names) < 2:
        return "".join(names)
    return separator.join(names[:-1]) + last_separator + names[-1]


def _demographic_values(row: Mapping[str, Any], settings: CaptionSettings) -> dict[str, str | None]:
    unknown = {str(v).strip().lower() for v in settings.unknown_values}
    values: dict[str, str | None] = {}
    for field in DEMOGRAPHIC_FIELDS:
        value = row.get(field)
        if is_missing(value) or format_value(value).lower() in unknown:
            values[field] = None
        elif field == "age":
            values[field] = str(int(float(value)))
        else:
            text = format_value(value)
            values[field] = text.lower() if settings.lowercase else text
    return values


def captions(frame: pd.DataFrame, labels: Sequence[str], settings: CaptionSettings, key: str) -> pd.Series:
    """The ``labels`` (PRISM) and ``demographics`` (LoRA-fairness) strategies: one caption per row.

    Args:
        frame: dataset rows (label columns, ``age``, ``sex``, ``race``, ...).
        labels: ``dataset.labels``, the order findings are listed in.
        settings: ``prompts.labels`` or ``prompts.demographics``.
        key: the config key of ``settings`` (for error messages), e.g. ``"prompts.labels"``.
    """
    template_fields(settings.template, CAPTION_FIELDS, f"{key}.template")
    rename = dict(settings.rename)
    texts = []
    for row, found in zip(frame.to_dict("records"), positive_findings(frame, labels), strict=True):
        if not found and settings.empty_caption is not None:
            texts.append(settings.empty_caption)
            continue
        names = [rename.get(name, name) for name in found]
        if settings.lowercase:
            names = [name.lower() for name in names]
        phrase = findings_phrase(list(dict.fromkeys(names)), settings.separator, settings.last_separator)
        values = _demographic_values(row, settings) | {"findings": phrase or settings.no_findings}
        texts.append(render(settings.template, values))
    return pd.Series(texts, index=frame.index, dtype="string")


def _number(value: Any) -> float | None:
    """``value`` as a float when it is a number or numeric text, else None."""
    if isinstance(value, bool | np.bool_):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if np.isnan(number) else number


def _is_sentinel(value: Any, sentinels: Sequence[Any]) -> bool:
    for sentinel in sentinels:
        if isinstance(sentinel, int | float) and not isinstance(sentinel, bool):
            if _number(value) == float(sentinel):
                return True
        elif format_value(value).lower() == str(sentinel).strip().lower():
            return True
    return False


def clean_value(value: Any, field: TabularField) -> str | None:
    """One tabular value after DGM-VLC's cleaning rules, as text; None when it is missing.

    Order: missing or a ``missing`` sentinel (e.g. 99999, 0, "Not Available") -> None; ``absolute``
    makes negative numbers positive (day counts); ``values`` maps the value's text to a phrase (e.g.
    1 -> "Alive"), a null phrase meaning missing.
    """
    if is_missing(value) or _is_sentinel(value, field.missing):
        return None
    number = _number(value)
    if field.absolute and number is not None:
        value = abs(number)
    text = format_value(value)
    return field.values.get(text, text)


def _tabular_column(frame: pd.DataFrame, field: str, index: int) -> str:
    for column in (tabular_column(field), field):
        if column in frame and (column.startswith("tab_") or column in CORE_COLUMNS):
            return column
    available = sorted(c[4:] for c in frame.columns if c.startswith("tab_"))
    raise InputError(
        f"prompts.tabular.fields[{index}].field = '{field}' is not in the dataset: there is no column "
        f"'tab_{field}' and no manifest field '{field}'. Tabular fields present: {available}"
    )


def tabular_captions(frame: pd.DataFrame, settings: TabularSettings) -> pd.Series:
    """The ``tabular`` strategy (DGM-VLC): ``prefix``, a space, and the phrases of the fields present.

    Every field's ``text`` has one ``{value}`` placeholder. Phrases are joined by ``separator``; the
    sentence ends in one full stop (a trailing comma is dropped, as DGM-VLC does, but no ".." is made).
    """
    fields = settings.fields
    if not fields:
        raise InputError("prompts.tabular.fields is empty; list the clinical fields to describe")
    columns = []
    for i, field in enumerate(fields):
        template_fields(field.text, ("value",), f"prompts.tabular.fields[{i}].text")
        columns.append(_tabular_column(frame, field.field, i))
    texts = []
    for row in frame[columns].itertuples(index=False):
        parts = []
        for value, field in zip(row, fields, strict=True):
            text = clean_value(value, field)
            if text is not None:
                parts.append(field.text.replace("{value}", text))
        sentence = " ".join(f"{settings.prefix} {settings.separator.join(parts)}".split())
        texts.append(sentence.rstrip(" ,:;.") + ".")
    return pd.Series(texts, index=frame.index, dtype="string")


def class_names(frame: pd.DataFrame, classes: ClassSettings) -> pd.Series:
    """The class of every row (``prompts.classes``): the column's value as text, renamed by ``names``.

    Numbers are written without ".0", so a finding column gives "0"/"1" and ``names: {"1": cancer}``
    renames them (MEP-LDM's ``class_names_dict``). Missing values stay missing; no column gives NA.
    """
    column = classes.column
    if column is None:
        return pd.Series(pd.NA, index=frame.index, dtype="string")
    if column not in frame:
        raise InputError(f"prompts.classes.column = '{column}' is not a column of the dataset")
    names = {str(k): str(v) for k, v in classes.names.items()}
    values = [None if is_missing(v) else names.get(format_value(v), format_value(v)) for v in frame[column]]
    return pd.Series(values, index=frame.index, dtype="string")


def mep_captions(frame: pd.DataFrame, settings: MepTemplate) -> pd.Series:
    """The ``mep`` strategy (MEP-LDM): ``{cluster}`` in words and ``{label}`` the lower-cased class name.

    ``frame`` needs ``cluster`` (Int64; NA for outliers, which get no prompt) and ``class_name``.
    """
    fields = template_fields(settings.template, MEP_FIELDS, "prompts.mep.template")
    if "label" in fields and frame["class_name"].isna().any():
        raise InputError(
            "prompts.mep.template uses {label} but some images have no class: set prompts.classes.column "
            "to a dataset column with a value for every image"
        )
    texts = []
    for cluster, name in zip(frame["cluster"], frame["class_name"], strict=True):
        if pd.isna(cluster):
            texts.append(None)
            continue
        label = None if pd.isna(name) else str(name).lower()
        texts.append(render(settings.template, {"cluster": number_words(int(cluster)), "label": label}))
    return pd.Series(texts, index=frame.index, dtype="string")


def combine(parts: Sequence[pd.Series], separator: str) -> pd.Series:
    """Join the strategies' texts in order; a row missing any part (a MEP outlier) gets no prompt."""
    if len(parts) == 1:
        return parts[0]

    def join(texts: tuple[Any, ...]) -> str | None:
        if any(pd.isna(t) for t in texts):
            return None
        return separator.join([t.rstrip().rstrip(".") for t in texts[:-1]] + [texts[-1]])

    return pd.Series([join(t) for t in zip(*parts, strict=True)], index=parts[0].index, dtype="string")


def build(frame: pd.DataFrame, labels: Sequence[str], settings: PromptSettings) -> pd.Series:
    """The prompt of every row under ``prompts.strategies`` (``frame`` has ``cluster``/``class_name``)."""
    strategies = list(settings.strategies)
    unknown = [s for s in strategies if s not in STRATEGIES]
    if not strategies or unknown:
        raise InputError(f"prompts.strategies = {strategies}: choose one or more of {list(STRATEGIES)}")
    builders = {
        "labels": lambda: captions(frame, labels, settings.labels, "prompts.labels"),
        "demographics": lambda: captions(frame, labels, settings.demographics, "prompts.demographics"),
        "tabular": lambda: tabular_captions(frame, settings.tabular),
        "mep": lambda: mep_captions(frame, settings.mep),
    }
    return combine([builders[name]() for name in strategies], settings.separator)


def prompt_ids(prompts: pd.Series) -> pd.Series:
    """Stable integer id per distinct prompt: its position among the sorted distinct texts (MEP-LDM)."""
    ids = {text: i for i, text in enumerate(sorted(prompts.dropna().unique()))}
    return pd.Series(
        [ids.get(t) if not pd.isna(t) else None for t in prompts], index=prompts.index, dtype="Int64"
    )
