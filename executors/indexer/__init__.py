from executors.indexer.executor import Indexer

__all__ = ['Indexer']
