"""Running things from the store's global order: subscriptions, sagas, projections."""
