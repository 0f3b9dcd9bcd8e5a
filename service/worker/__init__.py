"""The worker side: what runs inside a Ray Train worker for every task (:mod:`.worker`: rank,
resume, the optimizer step, logging, evaluation reports, checkpoints), the checkpoint format
(:mod:`.checkpoint`) and the plots runs log (:mod:`.plots`). Each task's loop lives in its folder."""
