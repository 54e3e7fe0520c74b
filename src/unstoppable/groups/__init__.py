"""Consumer groups, independent of any backend: the assignors
(:mod:`unstoppable.groups.assign`)."""
from unstoppable.groups.assign import (
    ASSIGNORS,
    MemberInfo,
    assign,
    assign_round_robin,
    assign_sticky,
    choose_assignor,
    member_description,
    parse_member_description,
)

__all__ = [
    "ASSIGNORS",
    "MemberInfo",
    "assign",
    "assign_round_robin",
    "assign_sticky",
    "choose_assignor",
    "member_description",
    "parse_member_description",
]
