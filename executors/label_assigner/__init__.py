from executors.label_assigner.executor import LabelAssigner

__all__ = ['LabelAssigner']
