"""Every resource router, in the order they appear in /docs."""

from service.accounts.views import router as accounts_router
from service.audit.views import router as audit_router
from service.datasets.views import router as datasets_router
from service.modelversions.views import router as models_router
from service.releases.views import router as releases_router
from service.reviews.views import router as reviews_router

ROUTERS: list = [models_router, datasets_router, releases_router, reviews_router, accounts_router, audit_router]
