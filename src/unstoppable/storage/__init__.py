"""The embedded storage engine (synchronous; no asyncio here)."""
from unstoppable.storage.log import Log, Topic, TopicConfig, VerifyReport, validate_topic_name
from unstoppable.storage.partition import Partition

__all__ = ["Log", "Topic", "TopicConfig", "Partition", "VerifyReport", "validate_topic_name"]
