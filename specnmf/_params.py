"""scikit-learn's estimator conventions, without importing scikit-learn.

:class:`ParamsMixin` gives an estimator whose ``__init__`` stores each
keyword argument under its own name: ``get_params``/``set_params``, a ``repr``
that lists the non-default parameters, declarative parameter checks, scikit-learn's tags and ``clone``, and
metadata routing of ``ivar`` (``set_fit_request`` and friends).  scikit-learn
is imported only inside the methods that only scikit-learn calls.
"""

from __future__ import annotations

import copy
import inspect

import numpy as np

__all__ = ["ParamsMixin"]

_UNCHANGED = "$UNCHANGED$"   # scikit-learn's sentinel: leave a request as it is


def _same(a, b):
    try:
        return bool(a == b) if not isinstance(a, np.ndarray) else False
    except Exception:  # pragma: no cover - exotic parameter types
        return a is b


class ParamsMixin:
    """``get_params``/``set_params``/``repr`` as in scikit-learn, without importing it.

    ``_parameter_constraints`` maps each parameter to a ``check(value, name)``
    that raises on a bad value (the checks of :mod:`specnmf._validation`).
    """

    _parameter_constraints: dict = {}

    @classmethod
    def _get_param_names(cls):
        sig = inspect.signature(cls.__init__)
        return sorted(p.name for p in sig.parameters.values()
                      if p.name != "self" and p.kind != p.VAR_KEYWORD)

    def get_params(self, deep=True):
        """Parameters of this estimator, as a dict (scikit-learn convention)."""
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params):
        """Set parameters; unknown names raise ``ValueError``. Returns self."""
        valid = self._get_param_names()
        for key, value in params.items():
            if key not in valid:
                raise ValueError(f"invalid parameter {key!r} for {type(self).__name__}; "
                                 f"valid parameters are {valid}")
            setattr(self, key, value)
        return self

    def _validate_params(self):
        for name, check in self._parameter_constraints.items():
            check(getattr(self, name), name)

    def __repr__(self):
        sig = inspect.signature(type(self).__init__)
        parts = []
        for name in self._get_param_names():
            default = sig.parameters[name].default
            value = getattr(self, name)
            if default is inspect.Parameter.empty or not _same(value, default):
                parts.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"

    def __sklearn_tags__(self):
        # only scikit-learn calls this, so importing it here adds no dependency
        from sklearn.utils import Tags, TargetTags, TransformerTags, InputTags

        return Tags(
            estimator_type=None,
            target_tags=TargetTags(required=False),
            transformer_tags=TransformerTags(preserves_dtype=[np.dtype(self.dtype).name]
                                             if self.dtype in ("float32", "float64") else []),
            # negative flux is data, not an error (input_tags.positive_only stays False);
            # NaN flux is allowed only where ivar == 0, which the tag cannot say
            input_tags=InputTags(allow_nan=False),
        )

    def __sklearn_clone__(self):
        """``sklearn.base.clone``: a new unfitted estimator with the same parameters and
        metadata requests (scikit-learn's default clone cannot copy plain request dicts)."""
        new = type(self)(**{k: copy.deepcopy(v) for k, v in self.get_params().items()})
        if hasattr(self, "_ivar_requests"):
            new._ivar_requests = dict(self._ivar_requests)
        return new

    # -- scikit-learn metadata routing, without importing scikit-learn ---------------
    # Meta-estimators (Pipeline, GridSearchCV, cross_validate) pass ``ivar`` on to
    # the methods for which it was requested, sliced like X.
    def _set_ivar_request(self, method, ivar):
        if ivar is _UNCHANGED:
            return self
        if not (ivar is None or isinstance(ivar, (bool, str))):
            raise ValueError(f"set_{method}_request(ivar=...) takes True, False, None or an "
                             f"alias (str); got {ivar!r}")
        requests = dict(getattr(self, "_ivar_requests", {}))
        requests[method] = ivar
        self._ivar_requests = requests
        return self

    def set_fit_request(self, *, ivar=_UNCHANGED):
        """Whether scikit-learn meta-estimators pass ``ivar`` to :meth:`fit` (and to the fit
        half of ``fit_transform``): True, False, None (error if given) or an alias.

        Needs ``sklearn.set_config(enable_metadata_routing=True)``.  Returns self.
        """
        return self._set_ivar_request("fit", ivar)

    def set_transform_request(self, *, ivar=_UNCHANGED):
        """As :meth:`set_fit_request`, for :meth:`transform`.  Returns self."""
        return self._set_ivar_request("transform", ivar)

    def set_score_request(self, *, ivar=_UNCHANGED):
        """As :meth:`set_fit_request`, for :meth:`score` (e.g. held-out chi^2 in
        ``GridSearchCV``).  Returns self."""
        return self._set_ivar_request("score", ivar)

    def get_metadata_routing(self):
        """The metadata requests of this estimator, as a scikit-learn ``MetadataRequest``."""
        from sklearn.utils.metadata_routing import MetadataRequest

        request = MetadataRequest(owner=self)
        requests = getattr(self, "_ivar_requests", {})
        for method in ("fit", "transform", "score"):
            getattr(request, method).add_request(param="ivar", alias=requests.get(method))
        return request
