"""The SpectralUnmix stellar demonstration: NMF vs PCA of 80 Coelho (2014) stars.

Fits a 4-component SpectralNMF and a 4-component PCA to the spectra of hot
stars, A/F stars, solar-like stars and cool dwarfs (20 each), matches each
component one-to-one to a class mean spectrum, prints the distance table and
writes ``stellar_demo.png`` and ``stellar_demo.json`` to the output folder.

    python examples/stellar_demo.py [--solver anls] [--smoothness 0] [--out demo_output]
"""

import argparse
import json
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from specnmf.demos import stellar_demo  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--solver", default="anls")
    parser.add_argument("--n-components", type=int, default=4)
    parser.add_argument("--smoothness", type=float, default=0.0)
    parser.add_argument("--max-iter", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="demo_output")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    result = stellar_demo(n_components=args.n_components, solver=args.solver,
                          smoothness=args.smoothness, random_state=args.seed,
                          max_iter=args.max_iter, plot=True)
    print(result.format_table())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result.figure.savefig(out / "stellar_demo.png", dpi=120)
    (out / "stellar_demo.json").write_text(json.dumps(result.summary(), indent=2))
    print(f"wrote {out / 'stellar_demo.png'} and {out / 'stellar_demo.json'}")
    return result


if __name__ == "__main__":
    main()
