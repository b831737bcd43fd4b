"""The one definition of each identifier's limits: team names, API key ids, model names, subjects.

Routes validate path, query and body values with these types, the database columns take their
lengths from these constants, and the audit log's indexed header columns check against them, so a
value one layer accepts never fails in another (a long team name is a 400 or 404 at the edge, never
a 500 from the audit log).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import StringConstraints

TEAM_NAME_MAX = 64
KEY_ID_MAX = 32  # generated ids are 16 hex characters; static config keys use "static:" + 12 hex
MODEL_NAME_MAX = 256
SUBJECT_MAX = 512  # a key id, an OIDC `sub`, or a certificate subject
REQUEST_ID_MAX = 128

# Lowercase letters, digits, '-' and '_', starting with a letter or digit.
TEAM_NAME_PATTERN = rf"^[a-z0-9][a-z0-9_-]{{0,{TEAM_NAME_MAX - 1}}}$"
# No control characters: these names reach logs, metrics labels and Redis keys.
PRINTABLE_PATTERN = r"^[^\x00-\x1f\x7f]+$"

TeamName = Annotated[
    str, StringConstraints(min_length=1, max_length=TEAM_NAME_MAX, pattern=TEAM_NAME_PATTERN)
]
KeyId = Annotated[str, StringConstraints(min_length=1, max_length=KEY_ID_MAX, pattern=PRINTABLE_PATTERN)]
ModelName = Annotated[str, StringConstraints(min_length=1, max_length=MODEL_NAME_MAX, pattern=PRINTABLE_PATTERN)]

_TEAM_NAME = re.compile(TEAM_NAME_PATTERN)
_PRINTABLE = re.compile(PRINTABLE_PATTERN)

TEAM_NAME_RULE = (
    f"1-{TEAM_NAME_MAX} lowercase letters, digits, '-' or '_', starting with a letter or digit"
)


def is_team_name(value: object) -> bool:
    return isinstance(value, str) and _TEAM_NAME.match(value) is not None


def is_key_id(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= KEY_ID_MAX and _PRINTABLE.match(value) is not None


def is_model_name(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MODEL_NAME_MAX and _PRINTABLE.match(value) is not None


def is_subject(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= SUBJECT_MAX
