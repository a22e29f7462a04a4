"""Sokoban for the decision-transformer example: gym-sokoban's level generator and rules, a gymnasium environment,
and an optimal solver (breadth-first search over player and box cells)."""
