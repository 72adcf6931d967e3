"""Serving the installed OHIF bundle, and the Content-Security-Policy it needs."""

from csp.constants import NONE, SELF, UNSAFE_EVAL, UNSAFE_INLINE
from csp.middleware import CSPMiddleware, PolicyParts
from django.conf import settings
from django.http import HttpRequest, HttpResponseBase
from whitenoise.middleware import WhiteNoiseMiddleware

from launcher import ohif_bundle

# Measured on OHIF 3.13 (see shared/ohif-notes.md): the codec glue evaluates strings
# ('wasm-unsafe-eval' alone breaks compressed-frame decoding), React and sonner inject
# <style> elements, thumbnails are data: URLs. connect-src gets the launch's DICOMweb
# origin added per response by the viewer views.
OHIF_CSP_DIRECTIVES: dict[str, list[str]] = {
    "default-src": [SELF],
    "script-src": [SELF, UNSAFE_EVAL],
    "style-src": [SELF, UNSAFE_INLINE],
    "img-src": [SELF, "data:", "blob:"],
    "font-src": [SELF],
    "worker-src": [SELF],
    "connect-src": [SELF],
    "object-src": [NONE],
    "base-uri": [SELF],
    "form-action": [SELF],
    "frame-ancestors": [NONE],
}

class OhifWhiteNoiseMiddleware(WhiteNoiseMiddleware):
    """WhiteNoise, plus the installed OHIF bundle under OHIF_ASSET_URL.

    The bundle directory is resolved once at start-up: a re-install switches the `current`
    link atomically, and a restarted process picks up the new bundle.
    """

    def __init__(self, get_response=None, settings=settings) -> None:
        super().__init__(get_response, settings=settings)
        bundle = ohif_bundle.installed_bundle(settings.OHIF_ROOT)
        if bundle is not None:
            prefix = settings.OHIF_ASSET_URL.removeprefix(settings.SCRIPT_NAME)
            self.add_files(str(bundle.static_dir), prefix=prefix)


class ContentSecurityPolicyMiddleware(CSPMiddleware):
    """django-csp, with OHIF's policy on every file of the OHIF bundle.

    Workers get the CSP of their own script response, so the decode worker needs the
    OHIF policy too, not just the viewer page.
    """

    def get_policy_parts(
        self, request: HttpRequest, response: HttpResponseBase, report_only: bool = False
    ) -> PolicyParts:
        parts = super().get_policy_parts(request, response, report_only)
        ohif_prefix = settings.OHIF_ASSET_URL.removeprefix(settings.SCRIPT_NAME)
        if parts.replace is None and request.path_info.startswith(ohif_prefix):
            return PolicyParts(parts.config, parts.update, OHIF_CSP_DIRECTIVES, parts.nonce)
        return parts
