"""placeholder"""
import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.set_defaults(func=lambda a: run_bench(a))


def run_bench(args: argparse.Namespace) -> int:
    return 0
