"""The embedded storage engine (synchronous; no asyncio here)."""
from unstoppable.storage.log import Log, Topic, TopicConfig, validate_topic_name
from unstoppable.storage.partition import Partition
from unstoppable.storage.verify import VerifyReport

__all__ = ["Log", "Topic", "TopicConfig", "Partition", "VerifyReport", "validate_topic_name"]
