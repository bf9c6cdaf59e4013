"""`ghosttrack` as a data-parallel rank that sends itself SIGINT after step N on rank 1 only:
    python ddp_interrupt.py N train --store ... (run by accelerate launch / torchrun; see test_ddp.py)."""
import os
import signal
import sys

from ghosttrack.train import trainer


def main() -> int:
    at_step, args = int(sys.argv[1]), sys.argv[2:]
    run = trainer.SAETrainer.run

    def run_with_a_ctrl_c(self, resume_state=None, on_step=None):
        def on_step_then_signal(step):
            if self.rank == 1 and step == at_step:
                os.kill(os.getpid(), signal.SIGINT)  # handled in this thread before the next step
        return run(self, resume_state, on_step_then_signal)

    trainer.SAETrainer.run = run_with_a_ctrl_c
    # A rank inherits SIGINT ignored when the tests run in the background; this test's own Ctrl-C
    # must not be, so its default comes back (not a setting of the user's ghosttrack).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from ghosttrack.cli import main as cli

    return cli(args)


if __name__ == "__main__":
    sys.exit(main())
