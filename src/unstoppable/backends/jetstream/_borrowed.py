"""What the JetStream backend shares with the embedded log: the group
assignors (every member computes the same assignment as on the embedded log,
``unstoppable.groups.assign``) and the topic and group name rules
(``unstoppable._names``). Both are backend-neutral modules with no storage
imports."""
from unstoppable._names import validate_group_name, validate_topic_name
from unstoppable.groups.assign import (
    ASSIGNORS,
    MemberInfo,
    assign,
    member_description,
    parse_member_description,
)

__all__ = ["ASSIGNORS", "MemberInfo", "assign", "member_description", "parse_member_description",
           "validate_group_name", "validate_topic_name"]
