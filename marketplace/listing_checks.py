"""What a listing may hold: checked in full before anything of it is stored.

Every bound here protects the registry's other users from one stranger's listing: its size as a
whole (a Discover answer must still reach buyers), its search rows (each Advertise rewrites them
under the node's one SQLite writer), its schemas (compiled once, no remote or looping `$ref`)
and its endpoint (dialable). `tests/test_registry_adversarial.py` tries each.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

from jsonschema import SchemaError
from jsonschema.validators import validator_for

from marketplace import discovery, pricing, schema_refs, schema_regex
from marketplace.agreements import check_endpoint
from marketplace.errors import InvalidArgument, SchemaViolation
from marketplace.identity import check_agent_id
from marketplace.v1 import registry_pb2

_SKILL_NAME = re.compile(r"^[a-z0-9_.-]{1,64}\Z")
MAX_SKILLS = 50
# Every (skill, price) offer repeats its skill's search tokens: up to 50 x 8 x 76 = 30,400
# rows, all rewritten by each Advertise under the node's one SQLite writer. A large honest
# listing (50 skills in 2 currencies, 8 tags and 15 words each) needs 6,000.
MAX_SEARCH_ROWS = 8192
MAX_TAGS = 8  # each pair of a skill's tags is a search token too
MAX_NAME = 128
MAX_DESCRIPTION = 2000
MAX_SCHEMA_BYTES = 64 * 1024
# A whole listing, serialized: a Discover answer holds up to `discovery.MAX_LIMIT` of them.
MAX_LISTING_BYTES = 256 * 1024
# A Discover answer stops before this many bytes of listings, well inside the 4 MiB a gRPC
# client receives by default (listings past it are left out, as past `limit`).
MAX_DISCOVER_BYTES = 3 * 1024 * 1024
_METHODS = set(registry_pb2.VerificationMethod.values()) - {0}


def check_schema(text: str, field: str) -> None:
    """Check a JSON Schema's text; an empty text means 'anything'. Texts already found valid
    are remembered (sellers re-advertise the same schemas), so re-checking costs a lookup."""
    if not text:
        return
    if len(text) > MAX_SCHEMA_BYTES or len(text.encode()) > MAX_SCHEMA_BYTES:
        raise InvalidArgument(f"{field} is larger than {MAX_SCHEMA_BYTES} bytes of UTF-8")
    problem = _schema_problem(text)
    if problem:
        raise SchemaViolation(f"{field} is not a valid JSON Schema: {problem}")


@functools.lru_cache(maxsize=4096)
def _schema_problem(text: str) -> str:
    try:
        schema = json.loads(text, parse_constant=_no_constant)
        if not isinstance(schema, dict | bool):
            return "a JSON Schema is an object (or true or false)"
        validator_for(schema).check_schema(schema)
    except (ValueError, SchemaError, RecursionError) as error:
        return str(error)[:500]
    return schema_regex.problem(schema) or schema_refs.problem(schema)


def _no_constant(name: str) -> Any:
    """NaN and Infinity: Python's JSON reads them, JSON (and every other reader) does not."""
    raise ValueError(f"{name} is not a JSON number")


def check_skill(skill: registry_pb2.Skill) -> None:
    """Validate one skill in place (tags lower-cased, currency codes normalised)."""
    if not _SKILL_NAME.match(skill.name):
        raise InvalidArgument(f"skill name {skill.name!r} must match [a-z0-9_.-]{{1,64}}")
    where = f"skill {skill.name}"
    if len(skill.description) > MAX_DESCRIPTION:
        raise InvalidArgument(f"{where}: description is longer than {MAX_DESCRIPTION}")
    if len(skill.tags) > MAX_TAGS:
        raise InvalidArgument(f"{where}: at most {MAX_TAGS} tags")
    tags = list(dict.fromkeys(discovery.check_tag(t) for t in skill.tags))
    del skill.tags[:]
    skill.tags.extend(tags)
    check_schema(skill.input_schema_json, f"{where}: input_schema_json")
    check_schema(skill.output_schema_json, f"{where}: output_schema_json")
    if not 1 <= len(skill.prices) <= pricing.MAX_PRICES:
        raise InvalidArgument(f"{where} needs 1..{pricing.MAX_PRICES} prices")
    for price in skill.prices:
        pricing.check_price(price, where)
    if len({p.currency for p in skill.prices}) != len(skill.prices):
        raise InvalidArgument(f"{where}: one price per currency")
    methods = list(skill.verification_methods)
    if not methods or not set(methods) <= _METHODS or len(set(methods)) != len(methods):
        raise InvalidArgument(f"{where}: list each verification method it offers once")


def check_listing(listing: registry_pb2.Listing) -> None:
    """Validate a listing in place. Its size is bounded as a whole, not only field by field,
    so that a few listings cannot make a Discover answer too large for buyers to receive."""
    check_agent_id(listing.agent_id)
    if listing.ByteSize() > MAX_LISTING_BYTES:
        raise InvalidArgument(f"a listing is at most {MAX_LISTING_BYTES} bytes serialized")
    if len(listing.name) > MAX_NAME:
        raise InvalidArgument(f"name is longer than {MAX_NAME} characters")
    check_endpoint(listing.endpoint)
    if not 1 <= len(listing.skills) <= MAX_SKILLS:
        raise InvalidArgument(f"a listing needs 1..{MAX_SKILLS} skills")
    for skill in listing.skills:
        check_skill(skill)
    if len({s.name for s in listing.skills}) != len(listing.skills):
        raise InvalidArgument("each skill name appears once in a listing")
    rows = sum(len(discovery.skill_terms(s)) * len(s.prices) for s in listing.skills)
    if rows > MAX_SEARCH_ROWS:
        raise InvalidArgument(
            f"this listing would be found through {rows} search rows (each skill's words, tags "
            f"and tag pairs, once per price); at most {MAX_SEARCH_ROWS}: list fewer prices, "
            "tags or description words")
