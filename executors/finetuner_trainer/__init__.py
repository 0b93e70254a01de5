from executors.finetuner_trainer.executor import FinetunerTrainer

__all__ = ['FinetunerTrainer']
