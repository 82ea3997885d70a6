terraform {
  required_version = ">= 1.3.0, < 2.0.0"

  required_providers {
    sym = {
      source  = "symopsio/sym"
      version = "~> 3.0"
    }
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.0"
    }
  }
}
