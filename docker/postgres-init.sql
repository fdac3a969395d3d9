-- Run once by the postgres image on an empty volume: ServiceB's own database.
CREATE DATABASE service_b;
