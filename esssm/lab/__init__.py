"""The lab: the tools around a trained model (reproduce, smoke, sweep, tables, the esssm commands)."""
