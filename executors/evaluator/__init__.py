from executors.evaluator.executor import Evaluator

__all__ = ['Evaluator']
