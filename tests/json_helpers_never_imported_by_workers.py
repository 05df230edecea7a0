"""A module no worker in the tests is told to import: jobs naming it must be refused."""


def anything(x: int) -> int:
    return x
