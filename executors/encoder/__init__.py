from executors.encoder.executor import Encoder

__all__ = ['Encoder']
