"""Distillation of the draft heads (SPD v11 drafter, EAGLE-3 chain head, SpecDec++ acceptance head) from the target."""
