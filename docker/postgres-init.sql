-- Run once by the postgres image on an empty volume: ServiceA's and
-- ServiceB's own databases, beside Payments' (`postgres`).
CREATE DATABASE service_a;
CREATE DATABASE service_b;
