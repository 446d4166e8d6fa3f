"""robots.txt parsing and matching (RFC 9309) and X-Robots-Tag noai, as pure functions."""

import time

import pytest

from moepipe.scrape.robots import RobotsRules, forbids_ai, normalize_path, parse_robots, product_token


def allowed(text: str, path: str, token: str = "moepipe") -> bool:
    return parse_robots(text, token).allows(path)


def test_product_token_is_the_leading_identifier_lower_cased():
    assert product_token("moepipe/0.1 (+https://example.invalid)") == "moepipe"
    assert product_token("Moe-Pipe_x/2") == "moe-pipe_x"
    with pytest.raises(ValueError):
        product_token("/0.1")


GROUPS = """\
User-agent: otherbot
Disallow: /

User-agent: MoePipe/2.0
Disallow: /private

User-agent: *
Disallow: /
"""


def test_group_for_our_token_wins_over_star_case_insensitively():
    assert allowed(GROUPS, "/public")
    assert not allowed(GROUPS, "/private/page")
    # an agent with no group of its own falls back to *
    assert not allowed(GROUPS, "/public", token="somebot")


def test_groups_naming_the_same_agent_are_merged():
    text = "User-agent: moepipe\nDisallow: /a\n\nUser-agent: x\nDisallow: /\n\nUser-agent: moepipe\nDisallow: /b\n"
    rules = parse_robots(text, "moepipe")
    assert not rules.allows("/a") and not rules.allows("/b") and rules.allows("/c")


def test_several_user_agent_lines_share_one_group():
    text = "User-agent: alpha\nUser-agent: moepipe\nDisallow: /shared\nUser-agent: beta\nDisallow: /\n"
    assert not allowed(text, "/shared/x")
    assert allowed(text, "/other")


def test_group_of_ours_with_only_an_empty_rule_allows_everything_despite_star():
    assert allowed("User-agent: moepipe\nDisallow:\n\nUser-agent: *\nDisallow: /\n", "/anything")


def test_blank_lines_do_not_end_a_group():
    # RFC 9309 groups by user-agent lines, not by blank lines: both agents share "Disallow: /"
    assert not allowed("User-agent: moepipe\n\nUser-agent: *\nDisallow: /\n", "/anything")


def test_no_matching_group_and_no_star_allows_everything():
    assert allowed("User-agent: otherbot\nDisallow: /\n", "/x")
    assert allowed("", "/x")


def test_rules_before_any_user_agent_are_ignored():
    assert allowed("Disallow: /\nUser-agent: *\nDisallow: /tmp\n", "/x")


def test_longest_match_wins_between_allow_and_disallow():
    text = "User-agent: *\nDisallow: /shop\nAllow: /shop/catalog\nDisallow: /shop/catalog/secret\n"
    assert not allowed(text, "/shop/cart")
    assert allowed(text, "/shop/catalog/item-1")
    assert not allowed(text, "/shop/catalog/secret/1")


def test_allow_wins_a_tie_of_equal_length():
    assert allowed("User-agent: *\nDisallow: /page\nAllow: /page\n", "/page")
    assert allowed("User-agent: *\nAllow: /page\nDisallow: /page\n", "/page")


def test_empty_disallow_allows_everything():
    assert allowed("User-agent: *\nDisallow:\n", "/x")


def test_star_wildcard_and_dollar_anchor():
    text = "User-agent: *\nDisallow: /*.gif$\nDisallow: /fish*\nDisallow: /*/tmp/\n"
    assert not allowed(text, "/images/a.gif")
    assert allowed(text, "/images/a.gif?size=2")  # $ anchors at the end, query included
    assert not allowed(text, "/fishes")  # a trailing * means the same as none
    assert not allowed(text, "/a/b/tmp/c")
    assert allowed(text, "/tmp/c")


def test_dollar_alone_matches_only_the_root():
    text = "User-agent: *\nDisallow: /$\n"
    assert not allowed(text, "/")
    assert allowed(text, "/index.html")


def test_query_is_part_of_the_matched_path():
    assert not allowed("User-agent: *\nDisallow: /search?q=\n", "/search?q=cats")
    assert allowed("User-agent: *\nDisallow: /search?q=\n", "/search")


@pytest.mark.parametrize("rule, path", [
    ("/foo/bar/%62%61%7A", "/foo/bar/baz"),  # escaped unreserved characters are decoded
    ("/foo/bar/baz", "/foo/bar/%62%61%7a"),
    ("/foo/bar/ツ", "/foo/bar/%E3%83%84"),  # non-ASCII is compared as UTF-8 escapes
    ("/foo/bar/%e3%83%84", "/foo/bar/%E3%83%84"),  # hex case does not matter
    ("/~joe", "/%7Ejoe"),
])
def test_percent_encoding_is_normalised_on_both_sides(rule, path):
    assert not allowed(f"User-agent: *\nDisallow: {rule}\n", path)


def test_escaped_reserved_characters_stay_distinct():
    # %2F is data inside a segment, not a path separator
    assert allowed("User-agent: *\nDisallow: /a/b\n", "/a%2Fb")
    assert normalize_path("/a%2fb") == "/a%2Fb"


def test_comments_bom_crlf_and_unknown_lines():
    text = ("\ufeffUser-agent: * # everyone\r\nSitemap: https://x.invalid/s.xml\r\n"
            "Crawl-delay: 5\r\nDisallow: /no # why\r\n")
    assert not allowed(text, "/no/1")
    assert allowed(text, "/yes")


def test_robots_txt_itself_is_always_allowed():
    assert RobotsRules.disallow_all().allows("/robots.txt")
    assert not RobotsRules.disallow_all().allows("/")
    assert RobotsRules.allow_all().allows("/anything")


def test_hostile_wildcards_do_not_backtrack_exponentially():
    text = "User-agent: *\nDisallow: /" + "*a" * 40 + "b\n"
    started = time.perf_counter()
    assert allowed(text, "/" + "a" * 3000)
    assert time.perf_counter() - started < 2.0


@pytest.mark.parametrize("values, forbidden", [
    (["noai"], True),
    (["noindex, noimageai"], True),
    (["NoAI"], True),
    (["moepipe: noai"], True),
    (["MoePipe: noindex, noimageai"], True),
    (["otherbot: noai"], False),  # binds only otherbot
    (["otherbot: noai", "moepipe: noimageai"], True),
    (["noindex, nofollow"], False),
    (["unavailable_after: 25 Jun 2010 15:00:00 PST"], False),
    ([], False),
])
def test_x_robots_tag_noai(values, forbidden):
    assert forbids_ai(values, "moepipe") is forbidden
