"""robots.txt (RFC 9309) parsing and matching, and the `X-Robots-Tag: noai` response header.

Pure functions over text: fetching, caching and the status-code rules (4xx: allow all, 5xx or
unreachable: disallow all) live in moepipe.scrape.fetch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# RFC 9309 §2.2.1: a product token is letters, "_" and "-". User-agent lines in the wild often
# carry a version ("moepipe/0.1"), so the token is the leading run of those characters.
_TOKEN = re.compile(r"[A-Za-z_-]+")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")
# X-Robots-Tag directives that themselves contain a colon, so "name:" is not an agent there.
_VALUED_DIRECTIVES = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})
_AI_DIRECTIVES = frozenset({"noai", "noimageai"})


def product_token(user_agent: str) -> str:
    """The product token of a User-Agent string, lower-cased: 'moepipe/0.1 (+url)' -> 'moepipe'."""
    match = _TOKEN.match(user_agent.strip())
    if not match:
        raise ValueError(f"user agent {user_agent!r} does not start with a product token")
    return match.group(0).lower()


def normalize_path(value: str) -> str:
    """Canonical percent-encoding for comparing a URL path with a rule (RFC 9309 §2.2.2).

    Octets outside printable US-ASCII are percent-encoded (UTF-8), escapes of unreserved characters
    are decoded, and the remaining escapes get upper-case hex, so '/%7efoo', '/~foo' and
    '/%7Efoo' compare equal while '/a%2Fb' stays different from '/a/b'.
    """
    raw = value.encode("utf-8")
    out: list[str] = []
    i = 0
    while i < len(raw):
        byte = raw[i]
        if byte == 0x25 and i + 2 < len(raw) and chr(raw[i + 1]) in _HEX and chr(raw[i + 2]) in _HEX:
            char = chr(int(raw[i + 1:i + 3], 16))
            out.append(char if char in _UNRESERVED else "%" + raw[i + 1:i + 3].decode().upper())
            i += 3
            continue
        out.append(chr(byte) if 0x20 < byte < 0x7F else f"%{byte:02X}")
        i += 1
    return "".join(out)


def _glob_match(pattern: str, text: str) -> bool:
    """Whole-string match where '*' matches any run; O(len*len) worst case, no regex backtracking.

    A hostile robots.txt cannot make this exponential, unlike a translated regular expression.
    """
    p = t = 0
    star, mark = -1, 0
    while t < len(text):
        if p < len(pattern) and pattern[p] == "*":
            star, mark = p, t
            p += 1
        elif p < len(pattern) and pattern[p] == text[t]:
            p += 1
            t += 1
        elif star >= 0:
            p, mark = star + 1, mark + 1
            t = mark
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


@dataclass(frozen=True)
class Rule:
    allow: bool
    pattern: str  # normalised; may hold '*' wildcards and a final '$'

    def matches(self, path: str) -> bool:
        if self.pattern.endswith("$"):
            return _glob_match(self.pattern[:-1], path)
        return _glob_match(self.pattern + "*", path)  # rules are prefixes unless anchored


@dataclass(frozen=True)
class RobotsRules:
    """The rules of the group that applies to one crawler; empty means everything is allowed."""

    rules: tuple[Rule, ...] = ()

    @classmethod
    def allow_all(cls) -> RobotsRules:
        return cls(())

    @classmethod
    def disallow_all(cls) -> RobotsRules:
        return cls((Rule(False, "/"),))

    def allows(self, path: str) -> bool:
        """Whether the crawler may fetch `path` (path plus '?query', as sent on the wire).

        The longest matching pattern wins; on a tie between allow and disallow, allow wins.
        """
        path = normalize_path(path or "/")
        if path == "/robots.txt":  # RFC 9309 §2.2.2: implicitly allowed
            return True
        best: Rule | None = None
        for rule in self.rules:
            if not rule.matches(path):
                continue
            if (best is None or len(rule.pattern) > len(best.pattern)
                    or (len(rule.pattern) == len(best.pattern) and rule.allow and not best.allow)):
                best = rule
        return best is None or best.allow


def _records(text: str) -> list[tuple[str, str]]:
    records = []
    for line in text.lstrip("\ufeff").splitlines():
        line = line.split("#", 1)[0]
        key, sep, value = line.partition(":")
        if sep:
            records.append((key.strip().lower(), value.strip()))
    return records


def parse_robots(text: str, token: str) -> RobotsRules:
    """Rules for the crawler with product token `token` (lower case) from a robots.txt body.

    Groups naming the token (case-insensitive) are merged; if there are none, the `*` groups are.
    Rules before the first user-agent line belong to no group and are ignored.
    """
    groups: list[tuple[set[str], list[Rule]]] = []
    agents: set[str] = set()
    rules: list[Rule] = []
    in_rules = False
    for key, value in _records(text):
        if key == "user-agent":
            if in_rules:  # a user-agent line after rules starts the next group
                agents, rules, in_rules = set(), [], False
            if not agents:
                groups.append((agents, rules))
            match = _TOKEN.match(value)
            agents.add("*" if value.startswith("*") else match.group(0).lower() if match else "")
        elif key in ("allow", "disallow") and groups and agents:
            in_rules = True
            if value:  # an empty rule matches nothing (RFC 9309 §2.2.2)
                rules.append(Rule(key == "allow", normalize_path(value)))
    for wanted in (token.lower(), "*"):
        chosen = [rule for names, group in groups if wanted in names for rule in group]
        if chosen or any(wanted in names for names, _ in groups):
            return RobotsRules(tuple(chosen))
    return RobotsRules.allow_all()


def forbids_ai(header_values: list[str], token: str) -> bool:
    """Whether X-Robots-Tag values carry `noai`/`noimageai` for everyone or for `token`.

    Accepts 'noai', 'noindex, noimageai', 'moepipe: noai' and 'otherbot: noai' (which binds
    only otherbot); an agent prefix applies to the directives after it in the same value.
    """
    for value in header_values:
        agent: str | None = None
        for part in value.split(","):
            part = part.strip()
            name, sep, rest = part.partition(":")
            if sep and name.strip().lower() not in _VALUED_DIRECTIVES:
                agent, part = name.strip().lower(), rest.strip()
            if part.lower() in _AI_DIRECTIVES and agent in (None, "*", token.lower()):
                return True
    return False
