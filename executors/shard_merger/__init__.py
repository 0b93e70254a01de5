from executors.shard_merger.executor import ShardMerger

__all__ = ['ShardMerger']
