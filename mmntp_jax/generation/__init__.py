"""Generation for trained runs: prompts of segments → ids → sampled ids → text and decoded media."""
