from executors.preprocessor.executor import Preprocessor

__all__ = ['Preprocessor']
