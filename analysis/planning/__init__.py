"""From cached signal tables and a parameter budget to a rank plan (peft LoraConfig JSON); reads no model."""
