"""Discovery's search: tokens, the query plan, and the merge of per-currency results.

Search tokens are lower-cased words of a skill's name, description and tags (a-z0-9 runs of 2+
characters, a few English stop words dropped, 32 characters at most, 48 at most per skill), plus
'#<tag>' for each whole tag and '#<tag>&<tag>' for each pair of a skill's tags (at most 8 tags:
28 pairs), so a query for two tags reads one index range instead of intersecting two. A query's
words and tags all have to match (AND).

Plan: one indexed range scan per currency scanned, already in price order, stopping at the
page size:
- with a skill name: the offers index (skill, currency, price); tokens are EXISTS probes on the
  (offer, token) primary key;
- with tokens only: the token index (token, currency, price) of the rarest token (estimated by a
  capped count, cached), the other tokens as probes: a lookup per scanned row in the
  (offer, token) key when matches are likely dense (the scan stops early), or a list of the
  token's offers built once when they are likely sparse (the scan will read the whole range);
- otherwise the offers index (currency, price).
Currencies ranked together (the ranking currency and those converted into it) are one
statement; each unconverted currency ranks after them, so it is read only while the page is
not yet full. Expiry and minimum reputation are filters on the same rows (both are
denormalised there; the token index carries the reputation too, so a token scan filters on it
before any probe).
"""

from __future__ import annotations

import functools
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, func, select

from marketplace.errors import FailedPrecondition, InvalidArgument
from marketplace.tables import OfferRow, TermRow
from marketplace.v1 import registry_pb2
from wallets.currencies import CURRENCIES, MAX_AMOUNT_ATOMIC, currency

OFFERS = OfferRow.__table__  # type: ignore[attr-defined]
TERMS = TermRow.__table__  # type: ignore[attr-defined]
Converter = Callable[[int, str, str], int]  # (amount_atomic, from_code, to_code) -> amount

_WORD = re.compile(r"[a-z0-9]+")
_TAG = re.compile(r"^[a-z0-9_.-]{1,32}\Z")
STOP_WORDS = frozenset({"an", "and", "are", "as", "at", "be", "by", "for", "from", "in", "into",
                        "is", "it", "its", "of", "on", "or", "that", "the", "this", "to", "with"})
MAX_TOKEN = 32
MAX_TERMS_PER_SKILL = 48
MAX_QUERY_TEXT = 200
MAX_QUERY_TOKENS = 8
MAX_LIMIT = 100
_COUNT_CAP = 20_000
_LIST_COST, _LOOKUP_COST = 1, 4  # relative per-entry costs, measured on SQLite
SQLITE_MMAP_BYTES = 1 << 30
_COUNT_TTL_S = 600.0
_COUNT_CACHE_MAX = 10_000


class FxConverter:
    """A `Converter` from an FX provider (`wallets.fx`): one quote per currency pair, reused
    until it expires; amounts convert with `wallets.fx.convert_amount` (rounded down)."""

    def __init__(self, provider: Any, clock_ms: Callable[[], int]) -> None:
        self.provider = provider
        self.clock_ms = clock_ms
        self._quotes: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def __call__(self, amount_atomic: int, from_code: str, to_code: str) -> int:
        from wallets.fx import convert_amount

        if from_code == to_code:
            return amount_atomic
        now = self.clock_ms()
        with self._lock:
            quote = self._quotes.get((from_code, to_code))
        if quote is None or quote.expires_at_ms <= now:
            quote = self.provider.quote(from_code, to_code, now)
            with self._lock:
                self._quotes[(from_code, to_code)] = quote
        return convert_amount(amount_atomic, quote)


def tune_reader(conn: Connection) -> None:
    """On SQLite, read this connection's pages through mmap (once per pooled connection): a
    query touches a few hundred random pages of a large file, and a read() system call for each
    costs more than the query itself."""
    if conn.dialect.name == "sqlite" and not conn.info.get("agentmarket_mmap"):
        conn.exec_driver_sql(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
        conn.info["agentmarket_mmap"] = True


def words(text: str) -> list[str]:
    """The search words of a text, in order, without repeats."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(text.lower()):
        if len(word) > 1 and word not in STOP_WORDS:
            seen.setdefault(word[:MAX_TOKEN], None)
    return list(seen)


def check_tag(tag: str) -> str:
    tag = tag.strip().lower()
    if not _TAG.match(tag):
        raise InvalidArgument(f"tag {tag!r} must be 1..32 characters of [a-z0-9_.-]")
    return tag


def skill_terms(skill: registry_pb2.Skill) -> list[str]:
    """The tokens a skill is found by: name words, tags, description words (up to 48 in all),
    then every pair of its tags."""
    terms: dict[str, None] = {}
    for word in words(skill.name.replace(".", " ").replace("_", " ").replace("-", " ")):
        terms.setdefault(word, None)
    tags = sorted(set(skill.tags))
    for tag in tags:
        terms.setdefault("#" + tag, None)
        for word in words(tag.replace(".", " ").replace("_", " ").replace("-", " ")):
            terms.setdefault(word, None)
    found = list(terms)
    for word in words(skill.description):
        if len(found) >= MAX_TERMS_PER_SKILL:
            break
        if word not in terms:
            terms[word] = None
            found.append(word)
    return found + [_pair(a, b) for i, a in enumerate(tags) for b in tags[i + 1:]]


def _pair(a: str, b: str) -> str:
    """The token of two tags together (a < b): a two-tag query is one index range."""
    return f"#{a}&{b}"


def tag_tokens(tags: Iterable[str]) -> list[str]:
    """What a set of tags asks for: pairs of them (each tag in one pair at least), or the tag."""
    ordered = sorted({check_tag(t) for t in tags})
    if len(ordered) == 1:
        return ["#" + ordered[0]]
    pairs = [_pair(ordered[i], ordered[i + 1]) for i in range(0, len(ordered) - 1, 2)]
    if len(ordered) % 2:
        pairs.append(_pair(ordered[-2], ordered[-1]))
    return pairs


@dataclass(frozen=True)
class Query:
    """A validated discovery request."""

    skill: str = ""
    currency: str = ""
    max_price_atomic: int = 0
    limit: int = 20
    tokens: tuple[str, ...] = ()
    min_reputation_permille: int = 0
    convert_currencies: bool = False

    @classmethod
    def build(cls, *, skill: str = "", currency_code: str = "", max_price_atomic: int = 0,
              limit: int = 0, text: str = "", tags: Iterable[str] = (),
              min_reputation_permille: int = 0, convert_currencies: bool = False) -> Query:
        limit = limit or 20
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidArgument(f"limit must be 1..{MAX_LIMIT}")
        if not 0 <= max_price_atomic <= MAX_AMOUNT_ATOMIC:
            raise InvalidArgument("max_price_atomic must be 0..2**62")
        code = currency(currency_code).code if currency_code else ""
        if max_price_atomic and not code:
            raise InvalidArgument("max_price_atomic needs a currency")
        if len(text) > MAX_QUERY_TEXT:
            raise InvalidArgument(f"text is longer than {MAX_QUERY_TEXT} characters")
        tags = list(tags)
        if len(tags) > MAX_QUERY_TOKENS:
            raise InvalidArgument(f"at most {MAX_QUERY_TOKENS} tags")
        tokens = list(dict.fromkeys([*words(text), *tag_tokens(tags)]))
        if len(tokens) > 2 * MAX_QUERY_TOKENS:
            raise InvalidArgument(f"at most {MAX_QUERY_TOKENS} words and {MAX_QUERY_TOKENS} tags")
        if not 0 <= min_reputation_permille <= 1000:
            raise InvalidArgument("min_reputation_permille must be 0..1000")
        if len(skill) > 64:
            raise InvalidArgument("skill is longer than 64 characters")
        return cls(skill, code, max_price_atomic, limit, tuple(tokens), min_reputation_permille,
                   convert_currencies and bool(code))


@dataclass
class Hit:
    """One matching offer, with its price in the ranking currency."""

    agent_id: str
    currency: str
    price_atomic: int
    rank_price_atomic: int
    group: int
    reputation_permille: int
    latency_ms: int

    @property
    def key(self) -> tuple[int, int, int, int, str]:
        return (self.group, self.rank_price_atomic, -self.reputation_permille, self.latency_ms,
                self.agent_id)


@dataclass
class TokenCounts:
    """How many offers carry a token (to drive a query by the rarest), counted on the covering
    token index (capped at _COUNT_CAP) and cached for ten minutes (an estimate is enough)."""

    counts: dict[str, tuple[float, int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def rarest(self, conn: Connection, tokens: tuple[str, ...]) -> str:
        if len(tokens) == 1:
            return tokens[0]
        return min(tokens, key=lambda t: (self.count(conn, t), t))

    def probe_as_list(self, conn: Connection, driver: str, probe: str, n: int) -> bool:
        """Check `probe` against a list of its offers built once (cost ~ its count), rather
        than by one index lookup per scanned row (cost ~ the rows the scan needs to find `n`
        matches, if tokens were independent)? The cheaper of the two, by these estimates."""
        probe_count = max(1, self.count(conn, probe))
        offers = max(1, self.count(conn, ""))
        scanned = min(self.count(conn, driver), n * offers // probe_count)
        return probe_count * _LIST_COST < scanned * _LOOKUP_COST

    def count(self, conn: Connection, token: str) -> int:
        """Offers carrying `token` (capped), or about how many offers there are (for ""),
        cached (see the class)."""
        now = time.monotonic()
        with self.lock:
            cached = self.counts.get(token)
        if cached is not None and now - cached[0] < _COUNT_TTL_S:
            return cached[1]
        if token:
            capped = select(TERMS.c.token).where(TERMS.c.token == token).limit(_COUNT_CAP)
            count = conn.execute(select(func.count()).select_from(capped.subquery())).scalar_one()
        else:  # the highest offer id: an upper bound, read off the primary key
            count = conn.execute(select(func.coalesce(func.max(OFFERS.c.id), 0))).scalar_one()
        with self.lock:
            if len(self.counts) >= _COUNT_CACHE_MAX:
                self.counts.clear()
            self.counts[token] = (now, count)
        return count


@functools.lru_cache(maxsize=256)
def _scan_sql(by_token: bool, by_skill: bool, probes: tuple[bool, ...], max_price: bool,
              min_reputation: bool, marker: str) -> str:
    """One currency's matching offers in rank order, as SQL text (one text per query shape).
    `probes`: for each other token, True to check it against the list of its offers in this
    currency, False to look each scanned offer up in the (offer, token) key."""
    if by_token:  # the driver token's covering index range, probed before the join
        price, reputation, offer = "t.price_atomic", "t.reputation_permille", "t.offer_id"
        sql = (f"FROM {TERMS.name} t JOIN {OFFERS.name} o ON o.id = t.offer_id "
               f"WHERE t.token = {marker} AND t.currency = {marker}")
    else:
        price, reputation, offer = "o.price_atomic", "o.reputation_permille", "o.id"
        sql = f"FROM {OFFERS.name} o WHERE o.currency = {marker}"
        if by_skill:
            sql += f" AND o.skill = {marker}"
    if max_price:
        sql += f" AND {price} <= {marker}"
    if min_reputation:
        sql += f" AND {reputation} >= {marker}"
    for i, as_list in enumerate(probes):
        if as_list:
            sql += (f" AND {offer} IN (SELECT p{i}.offer_id FROM {TERMS.name} p{i} WHERE "
                    f"p{i}.token = {marker} AND p{i}.currency = {marker})")
        else:
            sql += (f" AND EXISTS (SELECT 1 FROM {TERMS.name} p{i} WHERE p{i}.offer_id = "
                    f"{offer} AND p{i}.token = {marker})")
    return (f"SELECT o.agent_id, o.currency, o.price_atomic, o.reputation_permille, "
            f"o.latency_ms {sql} AND o.expires_at_ms > {marker} ORDER BY {price}, "
            f"o.reputation_permille DESC, o.latency_ms, o.agent_id LIMIT {marker}")


def plan(query: Query, conn: Connection, counts: TokenCounts,
         scans: list[tuple[str, int]], now_ms: int, n: int) -> tuple[str, list[Any]]:
    """One statement (UNION ALL of one ranked scan per currency, each stopping after `n`
    rows) and its parameters. `scans`: (currency, max price in it or 0)."""
    marker = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    probes = list(query.tokens)
    by_token = bool(probes) and not query.skill
    driver = ""
    if by_token:
        driver = counts.rarest(conn, query.tokens)
        probes.remove(driver)
    as_list = tuple(by_token and counts.probe_as_list(conn, driver, p, n) for p in probes)
    parts, params = [], []
    for code, max_price in scans:
        parts.append(_scan_sql(by_token, bool(query.skill), as_list, bool(max_price),
                               bool(query.min_reputation_permille), marker))
        params += [driver, code] if by_token else [code, *([query.skill] if query.skill else [])]
        params += [max_price] if max_price else []
        params += [query.min_reputation_permille] if query.min_reputation_permille else []
        for probe, listed in zip(probes, as_list, strict=True):
            params += [probe, code] if listed else [probe]
        params += [now_ms, n]
    if len(parts) == 1:
        return parts[0], params
    return " UNION ALL ".join(f"SELECT * FROM ({part}) s{i}"
                              for i, part in enumerate(parts)), params


def currencies_to_scan(query: Query, reference: str, fx: Converter | None) -> list[str]:
    if query.currency and not query.convert_currencies:
        return [query.currency]
    if query.convert_currencies and fx is None:
        raise FailedPrecondition("this marketplace has no FX provider to convert prices")
    first = query.currency or reference
    return [first, *sorted(c for c in CURRENCIES if c != first)]


def search(query: Query, conn: Connection, counts: TokenCounts, *, now_ms: int,
           reference: str, fx: Converter | None) -> list[Hit]:
    """The best `query.limit` distinct listings' hits, ranked (see marketplace.registry).

    Currencies that are not converted rank after the ranking currency's group, one group each
    in order: they are searched group by group, and once the groups so far hold `limit`
    listings, later groups (which could only rank after them) are not read. A later group's
    page of `limit` listings repeats at most the listings already found, so it still holds
    every new one the answer needs."""
    ranking = query.currency or reference
    scans = currencies_to_scan(query, reference, fx)
    # the ranking currency and those converted into it rank together; the others after, in order
    group_of = {code: 0 if code == ranking or fx is not None else position
                for position, code in enumerate(scans)}
    tiers: dict[int, list[tuple[str, int]]] = {}
    for code in scans:
        threshold = query.max_price_atomic
        if threshold and code != ranking and fx is not None:
            threshold = fx(threshold, ranking, code)
            if threshold <= 0:
                continue  # nothing in this currency is that cheap
        tiers.setdefault(group_of[code], []).append((code, threshold))
    best: dict[str, Hit] = {}
    for group in sorted(tiers):
        for hit in _search_group(query, conn, counts, tiers[group], group_of, now_ms=now_ms,
                                 ranking=ranking, fx=fx):
            best.setdefault(hit.agent_id, hit)
        if len(best) >= query.limit:
            break
    return sorted(best.values(), key=lambda h: h.key)[:query.limit]


def _search_group(query: Query, conn: Connection, counts: TokenCounts,
                  scanned: list[tuple[str, int]], group_of: dict[str, int], *, now_ms: int,
                  ranking: str, fx: Converter | None) -> list[Hit]:
    """The best `query.limit` distinct listings' hits among these currencies' scans (one
    ranking group): one statement, read further while a listing matched through several
    skills may hide the page's last places."""
    n = query.limit + 8
    while True:
        sql, params = plan(query, conn, counts, scanned, now_ms, n)
        rows = conn.exec_driver_sql(sql, tuple(params)).all()
        per_currency: dict[str, int] = {}
        frontier: dict[str, tuple[Any, ...]] = {}  # the lowest key an unseen row could have
        hits: list[Hit] = []
        for agent_id, code, price, reputation, latency in rows:
            per_currency[code] = per_currency.get(code, 0) + 1
            converts = code != ranking and fx is not None
            rank_price = fx(price, code, ranking) if converts else price  # type: ignore[misc]
            group = group_of[code]
            hit = Hit(agent_id, code, price, rank_price, group, reputation, latency)
            # Unconverted, SQL orders a currency exactly by `key`: unseen rows come after the
            # last. Converted prices can tie across distinct prices: any key at that price.
            edge = (group, rank_price, -1001, -1, "") if converts else hit.key
            frontier[code] = max(frontier.get(code, edge), edge)
            if query.max_price_atomic and rank_price > query.max_price_atomic:
                continue  # rounding at the threshold's conversion
            hits.append(hit)
        best: dict[str, Hit] = {}
        for hit in sorted(hits, key=lambda h: h.key):
            best.setdefault(hit.agent_id, hit)
        ranked = list(best.values())[:query.limit]
        # A currency whose scan filled its page may hold unseen offers ranked after what it
        # showed: the answer is sure when the page's last place ranks before all of them.
        unseen = [frontier[code] for code, count in per_currency.items() if count == n]
        sure = not unseen or (len(ranked) == query.limit and ranked[-1].key < min(unseen))
        if sure or n >= 20 * query.limit:
            return ranked
        n *= 4  # one listing matched through several skills: look further
