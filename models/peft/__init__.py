"""PEFT methods, one package each, behind one registry (``models.peft.registry``).

See ``models.peft.base`` for what a method is and ``docs/adding-a-method.md`` for how to add one.
"""
