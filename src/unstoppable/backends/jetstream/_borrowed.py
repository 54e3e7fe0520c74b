"""What the JetStream backend takes from the embedded storage: the group
assignors (every member computes the same assignment as on the embedded log)
and the topic and group name rules.

These are backend-neutral and are moving out of ``unstoppable.storage`` (the
assignors to ``unstoppable.groups.assign``, the name rules to
``unstoppable._names``); the rest of this package imports them from here, so
the move changes only the two import lines below.
"""
from unstoppable.storage.groups import (
    ASSIGNORS,
    MemberInfo,
    assign,
    member_description,
    parse_member_description,
    validate_group_name,
)
from unstoppable.storage.log import validate_topic_name

__all__ = ["ASSIGNORS", "MemberInfo", "assign", "member_description", "parse_member_description",
           "validate_group_name", "validate_topic_name"]
